//! `remexec-supervisor`: each action's supervisor (`remexec_worker::supervisor`) alone, a
//! small program that starts in a third of the time `remexec` takes.
fn main() -> std::process::ExitCode {
    remexec_worker::supervisor::main(&std::env::args_os().skip(1).collect::<Vec<_>>())
}

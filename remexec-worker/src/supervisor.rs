//! The supervisor: the first process of an action's PID namespace under
//! [`ProcessIsolation::supervised`](crate::ProcessIsolation::supervised).
//!
//! A worker started as root makes the PID namespace itself, and starts `SUPERVISOR --process-1
//! [--reveal INPUT_ROOT] --env-file FILE [--uid U --gid G] -- COMMAND…` as its process 1 at
//! once. Any other worker starts `SUPERVISOR --pid-namespace WORKER_PID --env-file FILE --
//! COMMAND…`, with no other program in between, and the supervisor then:
//! 1. arms the kernel's parent-death signal (`SIGKILL` when the worker dies) and checks that its
//!    parent is still the worker;
//! 2. makes a PID namespace, inside a user namespace that maps the worker's user to itself;
//! 3. starts itself again (`/proc/self/exe … --process-1 …`) as that namespace's process 1,
//!    which arms the parent-death signal too, then waits for it and exits with its status.
//!
//! `--pid-namespace` expects the arguments [`main`] gets to be the end of the process's own
//! command line (what came before them, the embedding binary's own, is given to process 1 too).
//! The supervisor starts with an empty environment; the command gets the one in the
//! [`ENV_FILE`].
//!
//! Process 1 keeps its credentials (so its parent-death signal stays armed), starts the
//! command as the action's user in its own working directory (entered while still privileged,
//! so that the action needs no access to the directories above its input root), waits, and
//! exits with the command's status. When process 1 dies, however it dies, the kernel kills
//! every process of the namespace: nothing an action starts outlives the action, its worker's
//! `SIGKILL` included.
//!
//! This does what util-linux's `setpriv --pdeathsig SIGKILL -- unshare --pid --fork
//! --kill-child=SIGKILL` did in front of the supervisor before: each action starts two programs
//! (three without root) instead of four. `remexec` ships the
//! supervisor as a small program of its own, `remexec-supervisor`, which starts in a third of
//! the time the whole `remexec` binary takes.
//!
//! With an action user, process 1 also has a mount namespace of its own, and `--reveal
//! INPUT_ROOT`: where a directory above the input root is closed to the action's user (a data
//! dir below root's home of mode 0700, or below a `mktemp -d`), it covers the highest such
//! directory, in its namespace only, with a tmpfs that holds just the path down to the input
//! root, and binds the input root there. The action then reaches its input root at its own
//! absolute path, as Bazel's test runner does, and sees nothing else of what was below the
//! closed directory.
//!
//! A binary that embeds a worker with this backend calls [`main`] when it is started as its
//! supervisor (`remexec` does it for its hidden `supervise` subcommand).

use std::ffi::OsString;
use std::io::Read as _;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use remexec_core::{Error, Result};

/// The exit code of a command the supervisor could not start (as a shell's 127).
pub const CANNOT_START: u8 = 127;

/// The supervisor's leading argument, followed by the worker's process id, that makes it start
/// the command in a PID namespace of its own: see the [module documentation](self).
pub const PID_NAMESPACE: &str = "--pid-namespace";

/// The leading argument of the supervisor as process 1 of the namespace, which the supervisor
/// outside it starts.
pub const PROCESS_1: &str = "--process-1";

/// The supervisor's argument, before `--`, naming the file that holds the command's
/// environment (`NAME=VALUE` entries, each ended by a NUL byte). The supervisor itself starts
/// with an empty environment, so that nothing an action sets (`LD_PRELOAD`, `GLIBC_TUNABLES`)
/// reaches a process that runs as root; it gives the command exactly these variables.
pub const ENV_FILE: &str = "--env-file";

/// The supervisor's argument, before `--`, naming the file it writes its report on what the
/// action used to, once the command and every process it started are gone: the CPU time and
/// largest resident set `getrusage(RUSAGE_CHILDREN)` gives, and the bytes its `/proc/self/io`
/// counted, as `NAME VALUE` lines. The worker creates the file; the supervisor opens it before
/// anything else, and writes nothing if it cannot start the command.
pub const USAGE: &str = "--usage";

/// The supervisor's leading argument that names the input root to make reachable (in a mount
/// namespace of its own): see the [module documentation](self).
pub const REVEAL: &str = "--reveal";

/// The supervisor's leading argument (before [`REVEAL`]) that gives the command the
/// supervisor's own standard input, where it has no lifeline: the namespaces backend's, which
/// starts bubblewrap (a sandbox made ahead reads its action's command there).
pub const STDIN: &str = "--stdin";

/// The supervisor's argument that makes it a waiter: it reads a [`spec`] from its standard
/// input to the end, then `exec`s that command with exactly that environment, in that
/// working directory, with an empty standard input.
pub const AWAIT: &str = "--await";

/// The first bytes of a spec.
const MAGIC: &[u8] = b"RXW1\0";

/// The largest spec a waiter reads: Linux's own bound on arguments and environment together
/// is smaller.
const MAX_SPEC: u64 = 16 << 20;

/// The spec of a command for a waiter: `MAGIC`, the working directory, the number of
/// arguments, the arguments, then `NAME=VALUE` entries; each ended by a NUL byte.
/// `InvalidArgument` for a NUL byte inside a field, or a name that is empty or has `=`.
pub fn spec(args: &[String], env: &[(String, String)], cwd: &Path) -> Result<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    let mut field = |bytes: &[u8], what: &str| {
        if bytes.contains(&0) {
            return Err(Error::invalid(format!("{what} has a NUL byte")));
        }
        out.extend_from_slice(bytes);
        out.push(0);
        Ok(())
    };
    field(cwd.as_os_str().as_bytes(), "the working directory")?;
    field(args.len().to_string().as_bytes(), "")?;
    for arg in args {
        field(arg.as_bytes(), "an argument")?;
    }
    out.extend(encode_environment(env)?);
    if out.len() as u64 > MAX_SPEC {
        return Err(Error::invalid(format!(
            "the command and its environment take {} bytes, over {MAX_SPEC}",
            out.len()
        )));
    }
    Ok(out)
}

/// A decoded [`spec`]: working directory, arguments, environment.
type Decoded = (PathBuf, Vec<OsString>, Vec<(OsString, OsString)>);

/// Decodes a [`spec`]; the reason if it is not one.
fn decode(bytes: &[u8]) -> std::result::Result<Decoded, String> {
    let body = bytes.strip_prefix(MAGIC).ok_or("not a command spec")?;
    let body = body
        .strip_suffix(&[0])
        .ok_or("a spec ends with a NUL byte")?;
    let mut fields = body.split(|b| *b == 0);
    let cwd = PathBuf::from(OsString::from_vec(
        fields.next().unwrap_or_default().to_vec(),
    ));
    let count: usize = fields
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .ok_or("no argument count")?;
    let args: Vec<OsString> = fields
        .by_ref()
        .take(count)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    if args.len() != count || args.is_empty() {
        return Err("too few arguments".into());
    }
    let env = fields
        .map(|entry| {
            let at = entry.iter().position(|b| *b == b'=').filter(|at| *at > 0);
            let at = at.ok_or("an environment entry without a name")?;
            let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
            Ok((os(&entry[..at]), os(&entry[at + 1..])))
        })
        .collect::<std::result::Result<_, String>>()?;
    Ok((cwd, args, env))
}

/// The waiter's argument after [`AWAIT`] that sets the command's environment over the
/// waiter's own instead of in place of it: a container's, which holds its image's `ENV`, as a
/// container made for the action gets it.
pub const OVER_ENV: &str = "--over-env";

/// The waiter ([`AWAIT`]): reads the spec and `exec`s it, with exactly its environment, or
/// that set over the waiter's own if `over`. Returns only if it cannot, with [`CANNOT_START`]
/// and the reason on stderr.
pub fn await_command(over: bool) -> ExitCode {
    let mut bytes = Vec::new();
    let read = std::io::stdin()
        .lock()
        .take(MAX_SPEC)
        .read_to_end(&mut bytes);
    let decoded = match read {
        // No spec at all: the backend dropped the sandbox unused.
        Ok(0) => return ExitCode::SUCCESS,
        Ok(_) => decode(&bytes),
        Err(e) => Err(format!("reading the command: {e}")),
    };
    let error = match decoded {
        Ok((cwd, args, env)) => {
            let mut command = std::process::Command::new(&args[0]);
            if !over {
                command.env_clear();
            }
            let e = command
                .args(&args[1..])
                .envs(env)
                .current_dir(cwd)
                .stdin(std::process::Stdio::null())
                .exec();
            format!("cannot start {:?}: {e}", args[0])
        }
        Err(e) => e,
    };
    eprintln!("remexec: {error}");
    ExitCode::from(CANNOT_START)
}

/// Whether the user `run_as` may search (`x`) the directory `dir`, by its mode bits.
fn searchable(dir: &Path, run_as: RunAs) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let mode = meta.mode();
    if meta.uid() == run_as.uid {
        mode & 0o100 != 0
    } else if meta.gid() == run_as.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// The highest directory above `path` that `run_as` cannot search, each judged by what it
/// resolves to.
fn first_closed(path: &Path, run_as: RunAs) -> Option<std::path::PathBuf> {
    let mut above: Vec<&Path> = path.ancestors().skip(1).collect();
    above.reverse();
    above
        .into_iter()
        .find(|dir| dir.parent().is_some() && !searchable(dir, run_as))
        .map(Path::to_path_buf)
}

/// Where a reveal puts what: a tmpfs over `closed`, the input root bound at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closed {
    /// The highest directory the action's user cannot search.
    pub closed: std::path::PathBuf,
    /// The path at which the input root must appear: as written if a directory on it is
    /// closed, else the real path (a symlink on the way leading into a closed directory).
    pub at: std::path::PathBuf,
}

/// Whether `run_as` cannot reach `root`, and if so where to reveal it: along `root` as written
/// (what bubblewrap and the action are given), else along its real path.
pub fn closed_ancestor(root: &Path, run_as: RunAs) -> Option<Closed> {
    if let Some(closed) = first_closed(root, run_as) {
        return Some(Closed {
            closed,
            at: root.to_path_buf(),
        });
    }
    let real = std::fs::canonicalize(root).ok()?;
    first_closed(&real, run_as).map(|closed| Closed { closed, at: real })
}

/// Makes `root` reachable by `run_as` at its own path, in a private mount namespace of this
/// process's own: see the [module documentation](self). Run as root, before the command
/// starts.
fn reveal(root: &Path, run_as: RunAs) -> Result<(), String> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::DirBuilderExt;
    let Some(Closed { closed, at }) = closed_ancestor(root, run_as) else {
        return Ok(());
    };
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let root = std::fs::canonicalize(root).map_err(|e| fail(&root.display().to_string(), &e))?;
    // Whatever the caller did, the mounts below happen in a namespace of this process's own,
    // and none of them propagates to the host's.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail("making a mount namespace", &e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("making the mounts private", &e))?;
    // The process backend starts the command in its working directory, below the input root:
    // entered again through the bind below. Anything else (bubblewrap, which enters its own)
    // starts in `/`, since what was below `closed` is hidden.
    let cwd = std::env::current_dir().map_err(|e| fail("reading the working directory", &e))?;
    let below = std::fs::canonicalize(&cwd).is_ok_and(|c| c.starts_with(&root));
    // Held open: the path is hidden once the tmpfs covers `closed`.
    let held = std::fs::File::open(&root).map_err(|e| fail(&root.display().to_string(), &e))?;
    mount(
        Some("tmpfs"),
        closed.as_path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(|e| fail(&format!("covering {}", closed.display()), &e))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&at)
        .map_err(|e| fail(&format!("creating {}", at.display()), &e))?;
    let source = format!("/proc/self/fd/{}", held.as_raw_fd());
    mount(
        Some(source.as_str()),
        at.as_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(&format!("binding {}", at.display()), &e))?;
    // The working directory (as the kernel names it: its real path) at its place below `at`.
    let back = match cwd.strip_prefix(&root) {
        Ok(rest) if below => at.join(rest),
        _ if below => cwd,
        _ => "/".into(),
    };
    std::env::set_current_dir(&back).map_err(|e| fail(&format!("entering {}", back.display()), &e))
}

/// The user and group an action runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id (supplementary groups are dropped).
    pub gid: u32,
}

/// The supervisor's arguments after the binary's own: `[--uid U --gid G] -- COMMAND…`.
pub fn arguments(run_as: Option<RunAs>, command: &[String]) -> Vec<OsString> {
    with_cgroups(run_as, &[], command)
}

/// [`arguments`], with `--cgroup DIR` for each cgroup the supervisor joins first.
pub fn with_cgroups(
    run_as: Option<RunAs>,
    cgroups: &[std::path::PathBuf],
    command: &[String],
) -> Vec<OsString> {
    let mut args = Vec::new();
    for dir in cgroups {
        args.extend(["--cgroup".into(), dir.into()]);
    }
    if let Some(r) = run_as {
        args.extend(["--uid".into(), r.uid.to_string().into()]);
        args.extend(["--gid".into(), r.gid.to_string().into()]);
    }
    args.push("--".into());
    args.extend(command.iter().map(OsString::from));
    args
}

fn parse(args: &[OsString]) -> Result<(Option<RunAs>, &[OsString]), String> {
    let number = |v: Option<&OsString>, what: &str| {
        v.and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| format!("{what} needs a number"))
    };
    let (mut uid, mut gid) = (None, None);
    let mut i = 0;
    loop {
        match args.get(i).and_then(|a| a.to_str()) {
            Some("--uid") => uid = Some(number(args.get(i + 1), "--uid")?),
            Some("--gid") => gid = Some(number(args.get(i + 1), "--gid")?),
            // Handled by `main` before anything else.
            Some("--cgroup" | ENV_FILE | USAGE) if args.get(i + 1).is_some() => {}
            Some("--") => break,
            other => return Err(format!("unexpected argument {other:?}")),
        }
        i += 2;
    }
    let command = &args[i + 1..];
    if command.is_empty() {
        return Err("no command".into());
    }
    let run_as = match (uid, gid) {
        (Some(uid), Some(gid)) => Some(RunAs { uid, gid }),
        (None, None) => None,
        _ => return Err("--uid and --gid go together".into()),
    };
    Ok((run_as, command))
}

/// `env` as an [`ENV_FILE`] holds it; `InvalidArgument` for a name that is empty or holds `=`
/// or a NUL byte, or a value that holds a NUL byte.
pub fn encode_environment(env: &[(String, String)]) -> remexec_core::Result<Vec<u8>> {
    let mut out = Vec::new();
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\0']) || value.contains('\0') {
            return Err(remexec_core::Error::invalid(format!(
                "environment variable {name:?}: a name must be non-empty without '=' or NUL, \
                 a value without NUL"
            )));
        }
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// The environment in the [`ENV_FILE`] `args` name before `--`, if any.
fn environment(args: &[OsString]) -> Result<Option<Vec<(OsString, OsString)>>, String> {
    use std::os::unix::ffi::OsStrExt;
    let Some(pair) = args
        .windows(2)
        .take_while(|p| p[0] != "--")
        .find(|p| p[0] == ENV_FILE)
    else {
        return Ok(None);
    };
    let bytes = std::fs::read(&pair[1]).map_err(|e| format!("reading {:?}: {e}", pair[1]))?;
    let entries = bytes.split(|b| *b == 0).filter(|e| !e.is_empty());
    let env = entries
        .map(|entry| {
            let at = entry.iter().position(|b| *b == b'=').unwrap_or(entry.len());
            let value = entry.get(at + 1..).unwrap_or_default();
            let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
            (os(&entry[..at]), os(value))
        })
        .collect();
    Ok(Some(env))
}

/// Process 1's parent-death signal. Its parent is outside the namespace, so it cannot check
/// its parent as [`outside`] does; instead, where its standard input is the worker's lifeline
/// (a pipe only the worker writes to), a pipe that has hung up means the worker died before
/// the signal was armed.
fn arm() -> Result<(), String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(
        std::os::fd::AsFd::as_fd(&stdin),
        PollFlags::empty(),
    )];
    let hung_up = poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP));
    match hung_up {
        true => Err("the worker is gone".into()),
        false => Ok(()),
    }
}

/// Steps 1 to 3 of the [module documentation](self): the parent-death signal, the namespaces,
/// and process 1, started with `rest`; returns its exit code. `worker` is the worker's process
/// id, as the supervisor's parent; `given` is how many arguments the supervisor was given (the
/// rest of its command line are the embedding binary's own, given to process 1 too).
fn outside(worker: &OsString, given: usize, rest: &[OsString]) -> Result<ExitCode, String> {
    use nix::sched::{CloneFlags, unshare};
    use nix::sys::prctl::set_pdeathsig;
    use nix::sys::signal::Signal;
    use nix::unistd::{Pid, getgid, getppid, getuid};
    let worker = worker
        .to_str()
        .and_then(|p| p.parse::<i32>().ok())
        .ok_or("--pid-namespace needs the worker's process id")?;
    set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("setting the parent-death signal: {e}"))?;
    // The worker died before the signal was armed: nothing may run.
    if getppid() != Pid::from_raw(worker) {
        return Err("the worker is gone".into());
    }
    let (uid, gid) = (getuid(), getgid());
    let user_ns = !uid.is_root();
    let mut flags = CloneFlags::CLONE_NEWPID;
    if user_ns {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(|e| format!("making the namespaces: {e}"))?;
    if user_ns {
        // The worker's user and group, mapped to themselves (as `unshare --map-current-user`).
        for (file, content) in [
            ("/proc/self/setgroups", "deny".to_string()),
            ("/proc/self/uid_map", format!("{uid} {uid} 1")),
            ("/proc/self/gid_map", format!("{gid} {gid} 1")),
        ] {
            std::fs::write(file, content).map_err(|e| format!("writing {file}: {e}"))?;
        }
    }
    let all: Vec<OsString> = std::env::args_os().collect();
    let own = all
        .get(1..all.len().saturating_sub(given))
        .unwrap_or_default();
    let mut process_1 = std::process::Command::new("/proc/self/exe");
    if let Some(name) = all.first() {
        process_1.arg0(name);
    }
    let status = process_1
        .args(own)
        .arg(PROCESS_1)
        .args(rest)
        .status()
        .map_err(|e| format!("starting process 1: {e}"))?;
    Ok(exit_code(status))
}

/// A child's status as this process's exit code: its own, or 128 plus the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    // Exit codes are bytes; 128 + signal always fits.
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(CANNOT_START))
}

/// Runs the supervisor on `args` (what follows the binary's own arguments) and returns the
/// command's exit code: its own, 128 plus the signal that killed it, or [`CANNOT_START`] with
/// the reason on stderr. [`crate::supervise`] is the binary's entry point, which also runs the
/// Docker backend's reaper.
pub fn main(args: &[OsString]) -> ExitCode {
    let args = match args {
        [flag] if flag == AWAIT => return await_command(false),
        [flag, over] if flag == AWAIT && over == OVER_ENV => return await_command(true),
        [flag, worker, rest @ ..] if flag == PID_NAMESPACE => {
            return match outside(worker, args.len(), rest) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("remexec: cannot start the action in a PID namespace: {e}");
                    ExitCode::from(CANNOT_START)
                }
            };
        }
        [flag, rest @ ..] if flag == PROCESS_1 => {
            if let Err(e) = arm() {
                eprintln!("remexec: {e}");
                return ExitCode::from(CANNOT_START);
            }
            rest
        }
        _ => args,
    };
    let process_1 = std::process::id() == 1;
    let (stdin, args) = match args {
        [flag, rest @ ..] if flag == STDIN => (std::process::Stdio::inherit(), rest),
        _ => (std::process::Stdio::null(), args),
    };
    let (reveal_root, args) = match args {
        [flag, root, rest @ ..] if flag == REVEAL => (Some(Path::new(root)), rest),
        _ => (None, args),
    };
    let (run_as, command) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("remexec supervisor: {e}");
            return ExitCode::from(CANNOT_START);
        }
    };
    // Read (or opened) before the reveal, which may hide the directory the file is in.
    let usage = match usage_file(args) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("remexec supervisor: {e}");
            return ExitCode::from(CANNOT_START);
        }
    };
    let env = match environment(args) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("remexec supervisor: {e}");
            return ExitCode::from(CANNOT_START);
        }
    };
    if let (Some(root), Some(run_as)) = (reveal_root, run_as)
        && let Err(e) = reveal(root, run_as)
    {
        eprintln!("remexec: cannot make the input root reachable by the action's user: {e}");
        return ExitCode::from(CANNOT_START);
    }
    // Join the action's cgroups first: every process the command starts is then counted.
    if let Err(e) = join_cgroups(args) {
        eprintln!("remexec: {e}");
        return ExitCode::from(CANNOT_START);
    }
    let mut child = std::process::Command::new(&command[0]);
    // Never the lifeline: an action's standard input is empty, or the worker's pipe to a
    // sandbox made ahead.
    child.args(&command[1..]).stdin(stdin);
    if let Some(env) = env {
        child.env_clear().envs(env);
    }
    // The working directory, standard output and error are the supervisor's: exactly the
    // action's; so is the environment, unless it came in an `--env-file`.
    if let Some(r) = run_as {
        // std drops the supplementary groups when a root parent changes the user.
        child.uid(r.uid).gid(r.gid);
    }
    match measured_status(&mut child, usage, process_1) {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("remexec: cannot start {:?}: {e}", command[0]);
            ExitCode::from(CANNOT_START)
        }
    }
}

/// Joins each cgroup named by a `--cgroup DIR` before `--`.
fn join_cgroups(args: &[OsString]) -> Result<(), String> {
    for pair in args.windows(2) {
        if pair[0] == "--" {
            break;
        }
        if pair[0] == "--cgroup" {
            let procs = Path::new(&pair[1]).join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string())
                .map_err(|e| format!("cannot join the cgroup {}: {e}", procs.display()))?;
        }
    }
    Ok(())
}

/// Runs `child` to its end; with a `usage` file, then reaps what is left of the action and
/// writes the report there.
fn measured_status(
    child: &mut std::process::Command,
    usage: Option<std::fs::File>,
    process_1: bool,
) -> std::io::Result<std::process::ExitStatus> {
    let io_before = usage.as_ref().and_then(|_| crate::usage::io_counters());
    // Outside a PID namespace of its own (the namespaces backend's, around bubblewrap), the
    // processes bubblewrap leaves to end after it must come back here to be counted.
    if usage.is_some() && !process_1 {
        let _ = nix::sys::prctl::set_child_subreaper(true);
    }
    let status = child.status()?;
    if let Some(mut file) = usage {
        use std::io::Write as _;
        reap_orphans(!process_1);
        let _ = file.write_all(crate::usage::report(io_before).as_bytes());
    }
    Ok(status)
}

/// Reaps the action's processes that have ended without their parent waiting for them
/// (orphans, reparented here), so that their use is counted with the command's. As process 1,
/// those still running die with it, uncounted. As a subreaper (`wait`), it waits up to a
/// second for the rest to end: bubblewrap's own processes, which end with their sandbox.
fn reap_orphans(wait: bool) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if wait && std::time::Instant::now() < deadline => {
                // They end within a millisecond or two of bubblewrap's monitor.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            Ok(WaitStatus::StillAlive) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// The [`USAGE`] file named before `--`, opened for writing.
fn usage_file(args: &[OsString]) -> Result<Option<std::fs::File>, String> {
    for pair in args.windows(2) {
        if pair[0] == "--" {
            break;
        }
        if pair[0] == USAGE {
            use std::os::unix::fs::OpenOptionsExt as _;
            // Never through a symlink, never blocked by a FIFO put at the path.
            let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(flags.bits())
                .open(&pair[1])
                .map_err(|e| format!("opening {}: {e}", Path::new(&pair[1]).display()))?;
            return Ok(Some(file));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_directory_closed_to_the_action_user_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let open = top.path().join("open");
        let closed = open.join("closed");
        let root = closed.join("inner/root");
        std::fs::create_dir_all(&root).unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(top.path(), 0o755).unwrap();
        mode(&open, 0o755).unwrap();
        mode(&closed, 0o700).unwrap();
        let nobody = RunAs {
            uid: 65534,
            gid: 65534,
        };
        let found = |path: &Path| closed_ancestor(path, nobody);
        let at = |closed: &Path, at: &Path| {
            Some(Closed {
                closed: closed.to_path_buf(),
                at: at.to_path_buf(),
            })
        };
        assert_eq!(found(&root), at(&closed, &root));
        // Reached through a symlink into the closed directory: judged where it really is.
        let link = top.path().join("link");
        std::os::unix::fs::symlink(closed.join("inner"), &link).unwrap();
        assert_eq!(found(&link.join("root")), at(&closed, &root));
        // A symlink inside the closed directory leading out of it: revealed as written.
        let out = top.path().join("out");
        std::fs::create_dir_all(out.join("root")).unwrap();
        std::os::unix::fs::symlink(&out, closed.join("away")).unwrap();
        let written = closed.join("away/root");
        assert_eq!(found(&written), at(&closed, &written));
        mode(&closed, 0o711).unwrap();
        assert_eq!(found(&root), None);
        mode(top.path(), 0o700).unwrap();
        assert_eq!(found(&root), at(top.path(), &root));
    }

    #[test]
    fn an_environment_file_round_trips_and_hostile_names_are_refused() {
        let env: Vec<(String, String)> = [("A", "1=2"), ("EMPTY", ""), ("LD_PRELOAD", "/x.so")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .to_vec();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), encode_environment(&env).unwrap()).unwrap();
        let args: Vec<OsString> = [ENV_FILE, &file.path().to_string_lossy(), "--", "true"]
            .map(OsString::from)
            .to_vec();
        let read = environment(&args).unwrap().unwrap();
        let expected: Vec<(OsString, OsString)> =
            env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(read, expected);
        for (name, value) in [("", "v"), ("A=B", "v"), ("A\0B", "v"), ("A", "v\0w")] {
            let bad = [(name.to_string(), value.to_string())];
            assert!(encode_environment(&bad).is_err(), "{name:?}={value:?}");
        }
        // After `--`, an `--env-file` is the command's argument, not the supervisor's.
        let after: Vec<OsString> = ["--", ENV_FILE, "/nonexistent"]
            .map(OsString::from)
            .to_vec();
        assert_eq!(environment(&after).unwrap(), None);
    }

    #[test]
    fn arguments_round_trip_and_bad_ones_are_refused() {
        let run_as = Some(RunAs {
            uid: 65534,
            gid: 65534,
        });
        let command = vec!["sh".to_string(), "-c".into(), "--uid 0".into()];
        let args = arguments(run_as, &command);
        let (parsed, rest) = parse(&args).unwrap();
        assert_eq!(parsed, run_as);
        assert_eq!(rest, command.iter().map(OsString::from).collect::<Vec<_>>());
        let (parsed, _) = parse(&arguments(None, &command)).unwrap();
        assert_eq!(parsed, None);
        for bad in [
            &["--"][..],
            &["--uid", "1", "--", "x"],
            &["--uid", "x", "--gid", "1", "--", "x"],
            &["sh"],
        ] {
            let bad: Vec<OsString> = bad.iter().map(OsString::from).collect();
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn specs_round_trip_and_hostile_ones_are_refused() {
        let args = vec!["sh".to_string(), "-c".into(), "".into(), "a=b".into()];
        let env = vec![
            ("A".to_string(), "1=2".to_string()),
            ("E".into(), "".into()),
        ];
        let bytes = spec(&args, &env, Path::new("/x/y")).unwrap();
        let (cwd, a, e) = decode(&bytes).unwrap();
        assert_eq!(cwd, Path::new("/x/y"));
        assert_eq!(a, args.iter().map(OsString::from).collect::<Vec<_>>());
        let want: Vec<(OsString, OsString)> =
            env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        assert_eq!(e, want);
        // No environment at all.
        assert_eq!(
            decode(&spec(&args, &[], Path::new("/")).unwrap())
                .unwrap()
                .2,
            vec![]
        );
        for bad in [
            spec(&["a\0b".into()], &[], Path::new("/")),
            spec(&args, &[("A=B".into(), "v".into())], Path::new("/")),
            spec(&args, &[], Path::new("/a\0b")),
        ] {
            assert!(bad.is_err());
        }
        let good = spec(&args, &env, Path::new("/")).unwrap();
        for bad in [
            &b""[..],
            b"RXW1\0/\0",
            b"RXW1\0/\0x\0",
            b"RXW1\0/\x005\0a\0",
            b"RXW1\0/\x000\0",
            b"RXW1\0/\x001\0a\0=v\0",
            &good[..good.len() - 1],
            &good[1..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}

//! The supervisor: the first process of an action's PID namespace under
//! [`ProcessIsolation::supervised`](crate::ProcessIsolation::supervised).
//!
//! The worker starts `setpriv --pdeathsig SIGKILL -- unshare --pid --fork --kill-child=SIGKILL
//! -- SUPERVISOR [--uid U --gid G] -- COMMAND…`. The supervisor is process 1 of the new PID
//! namespace; it keeps its credentials (so the kernel's parent-death signal `unshare` set on it
//! stays armed), starts the command as the action's user in its own working directory (entered
//! while still privileged, so that the action needs no access to the directories above its
//! input root), waits, and exits with the command's status. When the supervisor dies, however
//! it dies, the kernel kills every process of the namespace: nothing an action starts outlives
//! the action, its worker's `SIGKILL` included.
//!
//! A binary that embeds a worker with this backend calls [`main`] when it is started as its
//! supervisor (`remexec` does it for its hidden `supervise` subcommand).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::ExitCode;

/// The exit code of a command the supervisor could not start (as a shell's 127).
pub const CANNOT_START: u8 = 127;

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
            Some("--cgroup") if args.get(i + 1).is_some() => {}
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

/// Runs the supervisor on `args` (what follows the binary's own arguments) and returns the
/// command's exit code: its own, 128 plus the signal that killed it, or [`CANNOT_START`] with
/// the reason on stderr. With the feature `docker`, `--reap-docker ID` makes it the reaper of a
/// Docker backend instead ([`crate::docker::reap`]).
pub fn main(args: &[OsString]) -> ExitCode {
    #[cfg(feature = "docker")]
    if let [flag, id] = args
        && flag == crate::docker::REAP
    {
        return crate::docker::reap(&id.to_string_lossy());
    }
    let (run_as, command) = match parse(args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("remexec supervisor: {e}");
            return ExitCode::from(CANNOT_START);
        }
    };
    // Join the action's cgroups first: every process the command starts is then counted.
    for pair in args.windows(2) {
        if pair[0] == "--cgroup" {
            let procs = Path::new(&pair[1]).join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, std::process::id().to_string()) {
                eprintln!("remexec: cannot join the cgroup {}: {e}", procs.display());
                return ExitCode::from(CANNOT_START);
            }
        }
        if pair[0] == "--" {
            break;
        }
    }
    let mut child = std::process::Command::new(&command[0]);
    child.args(&command[1..]);
    // The environment, working directory and standard streams are the supervisor's: exactly
    // the action's.
    if let Some(r) = run_as {
        // std drops the supplementary groups when a root parent changes the user.
        child.uid(r.uid).gid(r.gid);
    }
    let status = match child.status() {
        Ok(status) => status,
        Err(e) => {
            eprintln!("remexec: cannot start {:?}: {e}", command[0]);
            return ExitCode::from(CANNOT_START);
        }
    };
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    // Exit codes are bytes; 128 + signal always fits.
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(CANNOT_START))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

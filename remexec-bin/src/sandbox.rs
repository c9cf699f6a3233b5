//! The isolation of `serve`'s and `worker`'s actions as the config describes it
//! ([`remexec_worker::groups`]): the executor groups, the action user, the supervisor, and the
//! host's tools found on `PATH`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use remexec_core::Result;
use remexec_worker::Isolation;
use remexec_worker::groups::{Host, Setup};

use crate::config::Config;

/// The hidden subcommand `remexec` runs its supervisor under (`remexec supervise …`).
pub const SUPERVISE: &str = "supervise";

/// `name` found in this process's `PATH`, or in `/usr/bin` and `/bin`.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What `config`'s worker's groups share: its name, `[worker] run_as`, `supervisor` (for
/// `remexec`, its own path and [`SUPERVISE`]; actions get `remexec-supervisor` instead where it
/// was installed next to it, which starts faster), and the tools on `PATH`.
fn setup(config: &Config, supervisor: Vec<OsString>) -> Setup {
    let small = supervisor.first().map(PathBuf::from);
    let host = Host {
        bwrap: find_tool("bwrap"),
        setpriv: find_tool("setpriv"),
        unshare: find_tool("unshare"),
        useradd: find_tool("useradd"),
    };
    let mut setup = Setup::new(config.worker_name(""), supervisor, host);
    let small = small.map(|exe| exe.with_file_name("remexec-supervisor"));
    if let Some(small) = small.filter(|p| p.is_file()) {
        setup.supervisor = vec![small.into()];
    }
    setup.run_as.clone_from(&config.worker.run_as);
    setup
}

/// The isolation of `config`'s worker: each executor group's backend, behind
/// `ExecutorGroups` when there are several groups.
pub fn worker_isolation(config: &Config, supervisor: Vec<OsString>) -> Result<Arc<dyn Isolation>> {
    let groups = config.worker.groups(1);
    remexec_worker::groups::isolation(&setup(config, supervisor), &groups)
}

//! Leftovers an action made unremovable never stop a worker.
//!
//! Permissions do not stop root, so when the tests run as root the scenario runs again in a
//! child process (this test binary, this test only) as uid 65534 under `setpriv`, where the
//! permission bits really bite.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::mem_cas::{MemCas, code, empty_root, lease, sh, worker};

/// Set in the child process: the directory the scenario runs in.
const CHILD_DIR: &str = "REMEXEC_WORKER_LEFTOVERS_DIR";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes `dir/junk` the kind of tree an action leaves behind: a read-only directory of
/// read-only files, and an unreadable, unwritable one.
fn make_unremovable(dir: &Path) {
    let junk = dir.join("junk");
    std::fs::create_dir_all(junk.join("ro/deeper")).unwrap();
    std::fs::create_dir_all(junk.join("closed/inner")).unwrap();
    std::fs::write(junk.join("ro/f"), "x").unwrap();
    std::fs::write(junk.join("closed/inner/g"), "y").unwrap();
    chmod(&junk.join("ro/f"), 0o444);
    chmod(&junk.join("ro"), 0o500);
    chmod(&junk.join("closed/inner"), 0o500);
    chmod(&junk.join("closed"), 0o000);
}

fn scenario(dir: &Path) {
    let work = dir.join("work");
    make_unremovable(&work.join("actions/old"));
    make_unremovable(&work.join("cache"));
    let cas = Arc::new(MemCas::default());
    let worker = worker(&work, 1, &cas, |_| {});
    let actions = work.join("actions");
    assert_eq!(std::fs::read_dir(&actions).unwrap().count(), 0);
    let script = "mkdir -p d/sub z/y; touch d/sub/f z/y/q; chmod 444 d/sub/f; chmod 500 d/sub; \
        chmod 000 z";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(async {
        let l = lease("mess", "0", empty_root(), sh(script, &[]));
        tokio::time::timeout(
            Duration::from_secs(60),
            worker.execute(l, CancellationToken::new()),
        )
        .await
        .unwrap()
    });
    assert_eq!(code(&r), 0, "{:?}", r.status);
    assert_eq!(
        std::fs::read_dir(&actions).unwrap().count(),
        0,
        "action directory left behind"
    );
    std::fs::write(dir.join("uid"), nix::unistd::geteuid().to_string()).unwrap();
}

#[test]
fn leftovers_never_stop_a_worker() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        scenario(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o777);
    let exe = std::env::current_exe().unwrap();
    let root = nix::unistd::geteuid().is_root();
    let mut child = if root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(exe);
        c
    } else {
        std::process::Command::new(exe)
    };
    let out = child
        .args(["--exact", "tests::leftovers::leftovers_never_stop_a_worker"])
        .args(["--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .output()
        .expect("running the scenario in a child process (is setpriv installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the scenario did not run:\n{stdout}"
    );
    let uid = std::fs::read_to_string(dir.path().join("uid")).unwrap();
    if root {
        assert_eq!(uid, "65534", "the scenario ran as root");
    }
    // Let root's clean-up of the temporary directory succeed whatever the child left.
    let _ = remexec_core::fs::remove_tree(dir.path());
}

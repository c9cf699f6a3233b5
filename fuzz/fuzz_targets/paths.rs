//! Path rules (`merkle::validate_name`, `validate_output_path`, `validate_symlink_target`,
//! `client::check_output_symlink`) against independent oracles.
//!
//! The input is split on `0xFF` into three strings `a`, `b`, `c`. Properties:
//! - `validate_name(s)` accepts exactly a non-empty name of at most 255 bytes, not `.`/`..`,
//!   without `/` or NUL;
//! - `validate_output_path(s)` accepts exactly a non-empty `/`-joined list of such names, so an
//!   accepted path has no leading or trailing `/`, no empty, `.` or `..` component, no NUL;
//!   the parent and the first component of an accepted path are accepted, and `a/b` is
//!   accepted exactly when both `a` and `b` are (for non-empty `a`, `b`);
//! - for a link at a path `a` as a client writes it (components that are `.`, `..` or valid
//!   names), `validate_symlink_target(a, b)` accepts exactly a non-empty target of at most
//!   4095 bytes without NUL that is absolute or, resolved lexically with a component stack
//!   from the link's directory, never climbs above the highest directory `a` itself reaches;
//!   so an accepted relative target resolves inside the root;
//! - moving an accepted link deeper (to `c/a` for an accepted `c`) keeps it accepted;
//! - `check_output_symlink` gives the same verdict, as `FailedPrecondition`.
//!
//! No core function returns a normalised form of a path (they only accept or refuse), so
//! idempotence is checked where core does normalise, in the `command` target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remexec_core::Error;
use remexec_core::client::check_output_symlink;
use remexec_core::merkle::{validate_name, validate_output_path, validate_symlink_target};
use remexec_fuzz::{
    join, name_ok, output_path_ok, parts, resolve_relative, result_path_ok, symlink_ok,
};

fn check_name_and_path(s: &str) {
    let name = validate_name(s);
    assert_eq!(name.is_ok(), name_ok(s), "validate_name({s:?}): {name:?}");
    let path = validate_output_path(s);
    let accepted = path.is_ok();
    assert_eq!(
        accepted,
        output_path_ok(s),
        "validate_output_path({s:?}): {path:?}"
    );
    for e in [name.err(), path.err()].into_iter().flatten() {
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }
    if accepted {
        assert!(
            !s.starts_with('/') && !s.ends_with('/') && !s.contains('\0'),
            "{s:?}"
        );
        assert!(s.split('/').all(|c| !matches!(c, "" | "." | "..")), "{s:?}");
        // The parent and the first component (every prefix would make a run quadratic).
        for (prefix, _) in [s.rsplit_once('/'), s.split_once('/')]
            .into_iter()
            .flatten()
        {
            assert!(validate_output_path(prefix).is_ok(), "{prefix:?} of {s:?}");
        }
    }
}

fn check_join(a: &str, b: &str) {
    if a.is_empty() || b.is_empty() {
        return;
    }
    let both = validate_output_path(a).is_ok() && validate_output_path(b).is_ok();
    let joined = format!("{a}/{b}");
    assert_eq!(validate_output_path(&joined).is_ok(), both, "{joined:?}");
}

fn check_symlink(path: &str, target: &str, deeper: &str) {
    // Paths as clients write them, `.` and `..` included.
    if !result_path_ok(path) {
        return;
    }
    let got = validate_symlink_target(path, target);
    assert_eq!(
        got.is_ok(),
        symlink_ok(path, target),
        "{path:?} -> {target:?}: {got:?}"
    );
    let checked = check_output_symlink(path, target);
    assert_eq!(checked.is_ok(), got.is_ok());
    if let Err(e) = checked {
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    }
    if got.is_err() {
        return;
    }
    if !target.starts_with('/') {
        let resolved = resolve_relative(path, target).expect("accepted: inside the root");
        assert!(
            resolved.iter().all(|c| !matches!(*c, "" | "." | "..")),
            "{resolved:?}"
        );
    }
    if validate_output_path(deeper).is_ok() {
        let moved = join(deeper, path);
        assert!(
            validate_symlink_target(&moved, target).is_ok(),
            "{moved:?} -> {target:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(p) = parts(data, 3) else { return };
    let (a, b, c) = (p[0], p[1], p[2]);
    for s in [a, b, c] {
        check_name_and_path(s);
    }
    check_join(a, b);
    check_symlink(a, b, c);
});

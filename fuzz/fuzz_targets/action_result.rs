//! `merkle::validate_action_result` against an independent oracle.
//!
//! Properties, for any bytes that decode as an `ActionResult`, under both digest functions:
//! - validation accepts exactly when every output path (files, directories, and each distinct
//!   `(path, target)` symlink over `output_symlinks` and the v2.0 lists) is relative, made of
//!   `.`, `..` and valid names as the client wrote it in its `Command`, and claimed once, every symlink target obeys the policy (non-empty, at most 4095
//!   bytes, no NUL, absolute or resolving lexically inside the root from the link's directory),
//!   every digest present and valid (an output directory's `root_directory_digest` only if
//!   set), and inlined contents match their digest;
//! - so an accepted result has only such paths, targets and digests (asserted directly too);
//! - errors are `InvalidArgument`;
//! - the verdict does not depend on the order of the lists, and survives re-encoding.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use remexec_core::merkle::validate_action_result;
use remexec_core::reapi::{ActionResult, OutputSymlink};
use remexec_core::{DigestFunction, Error};
use remexec_fuzz::{proto_digest_ok, resolve_relative, result_path_ok, symlink_ok};

/// Every symlink of the result, over the three lists, each distinct `(path, target)` once.
#[allow(deprecated)] // output_file_symlinks and output_directory_symlinks are REAPI v2.0's
fn symlinks(r: &ActionResult) -> Vec<&OutputSymlink> {
    let mut seen = HashSet::new();
    r.output_symlinks
        .iter()
        .chain(&r.output_file_symlinks)
        .chain(&r.output_directory_symlinks)
        .filter(|l| seen.insert((l.path.as_str(), l.target.as_str())))
        .collect()
}

fn expected(f: DigestFunction, r: &ActionResult) -> bool {
    let links = symlinks(r);
    let paths: Vec<&str> = r
        .output_files
        .iter()
        .map(|o| o.path.as_str())
        .chain(r.output_directories.iter().map(|o| o.path.as_str()))
        .chain(links.iter().map(|l| l.path.as_str()))
        .collect();
    let unique: HashSet<&str> = paths.iter().copied().collect();
    let files_ok = r.output_files.iter().all(|o| {
        proto_digest_ok(o.digest.as_ref())
            && (o.contents.is_empty() || o.digest == Some(f.digest_of(&o.contents).to_proto()))
    });
    paths.iter().all(|p| result_path_ok(p))
        && unique.len() == paths.len()
        && files_ok
        && r.output_directories.iter().all(|o| {
            proto_digest_ok(o.tree_digest.as_ref())
                && (o.root_directory_digest.is_none()
                    || proto_digest_ok(o.root_directory_digest.as_ref()))
        })
        && links.iter().all(|l| symlink_ok(&l.path, &l.target))
        && [&r.stdout_digest, &r.stderr_digest]
            .iter()
            .all(|d| d.is_none() || proto_digest_ok(d.as_ref()))
}

/// What an accepted result must look like, stated directly.
fn assert_accepted_shape(r: &ActionResult) {
    for p in r
        .output_files
        .iter()
        .map(|o| &o.path)
        .chain(r.output_directories.iter().map(|o| &o.path))
    {
        assert!(
            !p.starts_with('/') && !p.ends_with('/') && !p.contains('\0'),
            "{p:?}"
        );
        assert!(p.split('/').all(|c| !c.is_empty()), "{p:?}");
    }
    for l in symlinks(r) {
        if !l.target.starts_with('/') {
            let resolved = resolve_relative(&l.path, &l.target).expect("inside the root");
            assert!(!resolved.contains(&".."), "{l:?}");
        }
    }
}

#[allow(deprecated)]
fn reversed(r: &ActionResult) -> ActionResult {
    let mut r = r.clone();
    r.output_files.reverse();
    r.output_directories.reverse();
    r.output_symlinks.reverse();
    r.output_file_symlinks.reverse();
    r.output_directory_symlinks.reverse();
    r
}

fn check(f: DigestFunction, r: &ActionResult) {
    let got = validate_action_result(f, r);
    assert_eq!(got.is_ok(), expected(f, r), "{r:?}: {got:?}");
    match &got {
        Ok(()) => assert_accepted_shape(r),
        Err(e) => assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}"),
    }
    let flipped = validate_action_result(f, &reversed(r));
    assert_eq!(
        flipped.is_ok(),
        got.is_ok(),
        "verdict depends on list order"
    );
    let again = ActionResult::decode(r.encode_to_vec().as_slice()).expect("re-decodes");
    assert_eq!(&again, r);
    assert_eq!(validate_action_result(f, &again).is_ok(), got.is_ok());
}

fuzz_target!(|data: &[u8]| {
    let Ok(result) = ActionResult::decode(data) else {
        return;
    };
    for f in DigestFunction::ALL {
        check(f, &result);
    }
});

//! Output-directory `Tree` validation (`client::output_tree`, `InputTree::check_limits`,
//! `merkle::tree_file_digests`) against an independent oracle.
//!
//! The input is a `Tree` proto. Before checking, every `DirectoryNode` whose digest has an empty
//! hash and a `size_bytes` of `j` is linked to the real digest of `children[j]` (see
//! `remexec_fuzz::link_children`), so the fuzzer can build deep and wide DAGs without hashing.
//!
//! Properties, for both digest functions:
//! - `output_tree` accepts exactly when every directory is valid (sorted unique valid names,
//!   valid digests), every child digest named is in the tree, and the layout (a directory
//!   counted at every path where it appears) is within the limits; every error is
//!   `InvalidArgument`, never a panic, however hostile the nesting;
//! - an accepted tree: its root is the digest of `root`, it holds exactly the tree's
//!   directories, its entry count equals the oracle's, and `check_limits` succeeds at exactly
//!   the measured entries and depth and fails one below either;
//! - `tree_file_digests` succeeds on an accepted tree and returns each file digest once;
//! - re-encoding the tree and checking again gives the same verdict and count.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use remexec_core::client::output_tree;
use remexec_core::merkle::{TreeLimits, tree_file_digests};
use remexec_core::reapi::Tree;
use remexec_core::{Digest, DigestFunction, Error};
use remexec_fuzz::{TreeVerdict, digest_of_message, link_children, tree_layout};

fn check(f: DigestFunction, tree: &Tree) {
    let limits = TreeLimits::default();
    let expected = tree_layout(f, tree);
    let got = output_tree(f, tree.clone(), limits);
    let within =
        |entries: u64, depth: u64| entries <= limits.max_entries && depth <= limits.max_depth;
    match (&got, expected) {
        (Ok(input), TreeVerdict::Layout { entries, depth }) if within(entries, depth) => {
            check_accepted(f, tree, input, entries, depth);
        }
        (Err(e), TreeVerdict::Layout { entries, depth }) => {
            assert!(
                !within(entries, depth),
                "refused a tree within the limits: {e}"
            );
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
        }
        (Err(e), _) => assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}"),
        (Ok(_), verdict) => panic!("accepted a tree the oracle refuses: {verdict:?}"),
    }
    let again = Tree::decode(tree.encode_to_vec().as_slice()).expect("re-decodes");
    assert_eq!(&again, tree);
    let second = output_tree(f, again, limits);
    assert_eq!(
        second.as_ref().ok().map(|t| (t.root, t.directories.len())),
        got.as_ref().ok().map(|t| (t.root, t.directories.len())),
        "verdict changed on re-encoding"
    );
}

fn check_accepted(
    f: DigestFunction,
    tree: &Tree,
    input: &remexec_core::merkle::InputTree,
    entries: u64,
    depth: u64,
) {
    let root = tree.root.clone().unwrap_or_default();
    assert_eq!(input.root.to_proto(), digest_of_message(f, &root));
    let held: HashSet<_> = tree
        .children
        .iter()
        .chain([&root])
        .map(|d| digest_of_message(f, d))
        .collect();
    let got: HashSet<_> = input.directories.keys().map(Digest::to_proto).collect();
    assert_eq!(
        got, held,
        "the input tree must hold exactly the tree's directories"
    );
    for dir in input.directories.values() {
        for node in &dir.directories {
            let d = Digest::from_field(f, node.digest.as_ref(), "child").expect("validated");
            assert!(
                input.directories.contains_key(&d),
                "child {d} missing from an accepted tree"
            );
        }
    }
    let exact = TreeLimits {
        max_entries: entries,
        max_depth: depth,
    };
    assert_eq!(input.check_limits(exact).expect("at the limits"), entries);
    if entries > 0 {
        let fewer = TreeLimits {
            max_entries: entries - 1,
            ..exact
        };
        assert!(
            input.check_limits(fewer).is_err(),
            "{entries} entries within {fewer:?}"
        );
    }
    if depth > 0 {
        let shallower = TreeLimits {
            max_depth: depth - 1,
            ..exact
        };
        assert!(
            input.check_limits(shallower).is_err(),
            "depth {depth} within {shallower:?}"
        );
    }
    let files = tree_file_digests(f, tree).expect("an accepted tree lists its files");
    let unique: HashSet<_> = files.iter().collect();
    assert_eq!(unique.len(), files.len(), "file digests repeat");
    let named: HashSet<_> = tree
        .children
        .iter()
        .chain([&root])
        .flat_map(|d| &d.files)
        .filter_map(|file| file.digest.clone())
        .collect();
    let listed: HashSet<_> = files.iter().map(Digest::to_proto).collect();
    assert_eq!(
        listed, named,
        "tree_file_digests must list every file digest"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = Tree::decode(data) else { return };
    for f in DigestFunction::ALL {
        let mut tree = raw.clone();
        link_children(f, &mut tree);
        check(f, &tree);
    }
});

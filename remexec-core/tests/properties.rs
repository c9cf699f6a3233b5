//! Property tests of remexec-core's parsers and validators against independent oracles:
//! digests (text, wire and function forms), names and output paths, symlink targets,
//! `ActionResult` validation, the `Command` checks built from core's pieces and
//! `ActionBuilder`'s normalisation, and output-directory `Tree`s with their layout limits.
//!
//! The same properties are fuzzed by the targets under `fuzz/`. The strategies here mix valid
//! pieces with hostile ones (`.`, `..`, empty, `x/y`, NUL and over-long components, uppercase
//! or short hashes, negative or non-canonical sizes, missing digests, unsorted names, missing
//! children, deep and wide nesting), so every property is exercised on both verdicts.

use std::collections::HashSet;

use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message;
use remexec_core::client::{ActionBuilder, check_output_symlink, output_tree};
use remexec_core::merkle::{
    TreeLimits, resolve_output_path, tree_file_digests, validate_action_result,
    validate_command_paths, validate_name, validate_output_path, validate_symlink_target,
};
use remexec_core::reapi::{
    self, ActionResult, Command, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, Platform, SymlinkNode, Tree, command::EnvironmentVariable,
    digest_function::Value as ProtoFunction, platform::Property,
};
use remexec_core::{Digest, DigestFunction, Error};

// Oracles: each restates a rule independently of the code under test. They are the fuzz
// targets' own (`fuzz/src/lib.rs`), so a proptest and its fuzz twin check the same rule.
#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod oracles;

use oracles::{
    TreeVerdict, digest_of_message as wire_of, hash_ok, name_ok, output_path_ok,
    proto_digest_ok as wire_ok, resolve_below, resolve_relative, result_path_ok, size_text,
    symlink_ok, tree_layout,
};

/// Links each `DirectoryNode` whose digest has an empty hash and `size_bytes == k` to one of
/// the children listed after its own directory (`children[first + k % later]`, where `first`
/// is 0 for the root and `i + 1` for `children[i]`), or drops it when no child comes later.
/// Children are linked last first, so every link sees its target's final encoding.
fn link_children(f: DigestFunction, tree: &mut Tree) {
    let n = tree.children.len();
    let mut digests: Vec<reapi::Digest> = Vec::with_capacity(n);
    let link = |dir: &mut Directory, later: &[reapi::Digest]| {
        dir.directories.retain_mut(|node| {
            let Some(d) = node.digest.as_mut().filter(|d| d.hash.is_empty()) else {
                return true;
            };
            let Ok(k) = usize::try_from(d.size_bytes) else {
                return true;
            };
            if later.is_empty() {
                return false;
            }
            // `later` holds the later children's digests, nearest last.
            *d = later[later.len() - 1 - k % later.len()].clone();
            true
        });
    };
    for i in (0..n).rev() {
        link(&mut tree.children[i], &digests);
        digests.push(wire_of(f, &tree.children[i]));
    }
    if let Some(root) = tree.root.as_mut() {
        link(root, &digests);
    }
}

fn invalid(e: &Error) -> bool {
    matches!(e, Error::InvalidArgument(_))
}

// ---------------------------------------------------------------------------------------------
// Strategies: valid pieces, weighted up, mixed with hostile ones.
// ---------------------------------------------------------------------------------------------

const F: DigestFunction = DigestFunction::Sha256;

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(items).prop_map(str::to_string)
}

fn function() -> impl Strategy<Value = DigestFunction> {
    prop::sample::select(DigestFunction::ALL.to_vec())
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => pick(&["a", "b", "dir", "é", "a b", "-"]),
        3 => pick(&[".", "..", "", "x/y", "\0", "a\0"]),
        1 => Just("n".repeat(255)),
        1 => Just("n".repeat(256)),
    ]
}

/// Paths from hostile components, sometimes with a leading or trailing `/`.
fn path() -> impl Strategy<Value = String> {
    let edge = prop_oneof![6 => Just(""), 1 => Just("/")];
    (edge.clone(), vec(component(), 1..5), edge)
        .prop_map(|(a, c, b)| format!("{a}{}{b}", c.join("/")))
}

/// Paths drawn from few components, so that results and commands repeat them.
fn small_path() -> impl Strategy<Value = String> {
    let c = prop_oneof![12 => pick(&["a", "b"]), 1 => pick(&[".", "..", "", "\0"])];
    vec(c, 1..3).prop_map(|c| c.join("/"))
}

fn valid_path() -> impl Strategy<Value = String> {
    vec(pick(&["a", "b", "dir"]), 1..4).prop_map(|c| c.join("/"))
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => vec(pick(&["a", "b", "..", "..", ".", ""]), 1..6).prop_map(|c| c.join("/")),
        1 => pick(&["/usr/bin/python3", "/", "", "a\0b", "../../../etc/passwd"]),
        1 => Just("a/".repeat(2048)),
    ]
}

fn valid_hash() -> impl Strategy<Value = String> {
    any::<[u8; 32]>().prop_map(|h| h.iter().map(|b| format!("{b:02x}")).collect())
}

fn hash_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => valid_hash(),
        1 => valid_hash().prop_map(|h| h.to_uppercase()),
        1 => valid_hash().prop_map(|h| h[1..].to_string()),
        1 => valid_hash().prop_map(|h| format!("{h}0")),
        1 => valid_hash().prop_map(|h| format!("g{}", &h[1..])),
        1 => valid_hash().prop_map(|h| format!("é{}", &h[2..])),
        1 => Just(String::new()),
    ]
}

fn size_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0..1_000_000i64).prop_map(|n| n.to_string()),
        2 => any::<i64>().prop_map(|n| n.to_string()),
        3 => pick(&["0", "05", "+5", "-0", "-1", "", "x", " 5", "9223372036854775807",
                    "9223372036854775808", "18446744073709551616"]),
    ]
}

fn digest_text() -> impl Strategy<Value = String> {
    let tail = prop_oneof![6 => Just(""), 1 => Just("/x"), 1 => Just("/")];
    let sep = prop_oneof![8 => Just("/"), 1 => Just(""), 1 => Just("//")];
    (hash_text(), sep, size_string(), tail).prop_map(|(h, s, n, t)| format!("{h}{s}{n}{t}"))
}

fn wire_digest() -> impl Strategy<Value = Option<reapi::Digest>> {
    let valid = (valid_hash(), 0..i64::MAX)
        .prop_map(|(hash, size_bytes)| reapi::Digest { hash, size_bytes });
    let hostile = (hash_text(), any::<i64>())
        .prop_map(|(hash, size_bytes)| reapi::Digest { hash, size_bytes });
    prop_oneof![8 => valid.prop_map(Some), 1 => hostile.prop_map(Some), 1 => Just(None)]
}

fn output_file() -> impl Strategy<Value = OutputFile> {
    let x = F.digest_of(b"x").to_proto();
    let content = prop_oneof![
        2 => Just((Some(x.clone()), b"x".to_vec())),
        1 => Just((Some(x), b"y".to_vec())),
        4 => wire_digest().prop_map(|d| (d, Vec::new())),
    ];
    (small_path(), content).prop_map(|(path, (digest, contents))| OutputFile {
        path,
        digest,
        contents,
        ..Default::default()
    })
}

fn output_symlinks() -> impl Strategy<Value = Vec<OutputSymlink>> {
    let link = (small_path(), target()).prop_map(|(path, target)| OutputSymlink {
        path,
        target,
        ..Default::default()
    });
    vec(link, 0..3)
}

#[allow(deprecated)] // output_file_symlinks and output_directory_symlinks are REAPI v2.0's
fn action_result() -> impl Strategy<Value = ActionResult> {
    let dir = (small_path(), wire_digest()).prop_map(|(path, tree_digest)| OutputDirectory {
        path,
        tree_digest,
        ..Default::default()
    });
    let std_digest = prop_oneof![3 => Just(None), 1 => wire_digest()];
    (
        (vec(output_file(), 0..3), vec(dir, 0..2)),
        (
            output_symlinks(),
            output_symlinks(),
            output_symlinks(),
            any::<bool>(),
        ),
        std_digest,
    )
        .prop_map(
            |((files, dirs), (links, file_links, dir_links, repeat), stdout)| ActionResult {
                output_files: files,
                output_directories: dirs,
                output_file_symlinks: if repeat { links.clone() } else { file_links },
                output_symlinks: links,
                output_directory_symlinks: dir_links,
                stdout_digest: stdout,
                ..Default::default()
            },
        )
}

#[allow(deprecated)] // output_files, output_directories and platform: REAPI v2.0-v2.1
fn command() -> impl Strategy<Value = Command> {
    let pair = |names, values| (pick(names), pick(values));
    let env = vec(pair(&["A", "B", "PATH"], &["1", "2", ""]), 0..4);
    let props = vec(pair(&["OSFamily", "cpu"], &["linux", "x86"]), 0..3);
    let wd =
        prop_oneof![3 => Just(String::new()), 3 => small_path(), 1 => pick(&["/abs", "a/", "."])];
    let paths = (
        vec(small_path(), 0..4),
        vec(small_path(), 0..2),
        vec(small_path(), 0..2),
    );
    (
        vec(pick(&["/bin/sh", "-c", ""]), 0..3),
        env,
        paths,
        wd,
        prop::option::of(props),
    )
        .prop_map(
            |(arguments, env, (outs, files, dirs), working_directory, props)| Command {
                arguments,
                environment_variables: env
                    .into_iter()
                    .map(|(name, value)| EnvironmentVariable { name, value })
                    .collect(),
                output_paths: outs,
                output_files: files,
                output_directories: dirs,
                working_directory,
                platform: props.map(|p| Platform {
                    properties: p
                        .into_iter()
                        .map(|(name, value)| Property { name, value })
                        .collect(),
                }),
                ..Default::default()
            },
        )
}

/// Names from `pool`, sometimes a name every list may use (a clash) or an invalid one.
fn tree_name(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![30 => pick(pool), 1 => Just("s".to_string()), 1 => pick(&[".", "..", "", "x/y"])]
}

fn mostly_valid_digest() -> impl Strategy<Value = Option<reapi::Digest>> {
    prop_oneof![4 => wire_digest(), 10 => valid_hash().prop_map(|hash| Some(reapi::Digest { hash, size_bytes: 1 }))]
}

/// A directory whose child nodes are mostly links to `children[j]` (see [`link_children`]).
fn tree_directory() -> impl Strategy<Value = Directory> {
    let file =
        (tree_name(&["f", "g", "h"]), mostly_valid_digest()).prop_map(|(name, digest)| FileNode {
            name,
            digest,
            ..Default::default()
        });
    let marker = prop_oneof![3 => Just(0i64), 1 => 0..3i64].prop_map(|j| {
        Some(reapi::Digest {
            hash: String::new(),
            size_bytes: j,
        })
    });
    let child = prop_oneof![12 => marker, 1 => mostly_valid_digest()];
    let sub = (tree_name(&["d", "e", "x"]), child)
        .prop_map(|(name, digest)| DirectoryNode { name, digest });
    let target = prop_oneof![12 => pick(&["a", "../x", "/abs"]), 1 => pick(&["", "a\0"])];
    let link = (tree_name(&["l", "m"]), target).prop_map(|(name, target)| SymlinkNode {
        name,
        target,
        ..Default::default()
    });
    let tidy = prop::bool::weighted(0.9);
    (vec(file, 0..3), vec(sub, 0..4), vec(link, 0..2), tidy).prop_map(
        |(mut files, mut directories, mut symlinks, tidy)| {
            if tidy {
                files.sort_by(|a, b| a.name.cmp(&b.name));
                files.dedup_by(|a, b| a.name == b.name);
                directories.sort_by(|a, b| a.name.cmp(&b.name));
                directories.dedup_by(|a, b| a.name == b.name);
                symlinks.sort_by(|a, b| a.name.cmp(&b.name));
                symlinks.dedup_by(|a, b| a.name == b.name);
            }
            Directory {
                files,
                directories,
                symlinks,
                ..Default::default()
            }
        },
    )
}

fn tree() -> impl Strategy<Value = (DigestFunction, Tree)> {
    (
        function(),
        prop::option::weighted(0.9, tree_directory()),
        vec(tree_directory(), 0..6),
    )
        .prop_map(|(f, root, children)| {
            let mut tree = Tree { root, children };
            link_children(f, &mut tree);
            (f, tree)
        })
}

// ---------------------------------------------------------------------------------------------
// Digests.
// ---------------------------------------------------------------------------------------------

proptest! {
    /// `Digest::parse` accepts exactly `hash/size` with a valid hash and a canonical size;
    /// an accepted digest displays back as its input and round-trips through the proto.
    #[test]
    fn digest_text_matches_oracle(s in digest_text(), f in function()) {
        let expected = match s.split_once('/') {
            Some((hash, size)) if hash_ok(hash) => size_text(size),
            _ => None,
        };
        let parsed = Digest::parse(f, &s);
        prop_assert_eq!(parsed.is_ok(), expected.is_some(), "{:?}: {:?}", s, parsed);
        match parsed {
            Ok(d) => {
                prop_assert_eq!(d.to_string(), s.clone());
                prop_assert!(hash_ok(&d.hash_hex()));
                prop_assert_eq!(Some(d.size() as i64), expected);
                prop_assert_eq!(d.function(), f);
                prop_assert_eq!(Digest::from_proto(f, &d.to_proto()).expect("own proto"), d);
            }
            Err(e) => prop_assert!(invalid(&e), "{:?}", e),
        }
    }

    /// `Digest::from_hex` accepts exactly a valid hash with a non-negative size.
    #[test]
    fn digest_from_hex_refuses_bad_hashes_and_negative_sizes(
        hash in hash_text(),
        size in prop_oneof![any::<i64>(), -2..3i64],
        f in function(),
    ) {
        let got = Digest::from_hex(f, &hash, size);
        prop_assert_eq!(got.is_ok(), hash_ok(&hash) && size >= 0, "{:?}/{}: {:?}", hash, size, got);
        if let Ok(d) = got {
            prop_assert_eq!((d.hash_hex(), d.size()), (hash, size as u64));
        }
    }

    /// `Digest::from_proto` accepts exactly valid wire digests and gives them back unchanged.
    #[test]
    fn digest_proto_round_trips(wire in wire_digest(), f in function()) {
        let Some(wire) = wire else {
            prop_assert!(Digest::from_field(f, None, "d").is_err());
            return Ok(());
        };
        let got = Digest::from_proto(f, &wire);
        prop_assert_eq!(got.is_ok(), wire_ok(Some(&wire)), "{:?}: {:?}", wire, got);
        if let Ok(d) = got {
            prop_assert_eq!(d.to_proto(), wire);
            prop_assert_eq!(Digest::parse(f, &d.to_string()).expect("own text"), d);
        }
    }

    /// Only UNKNOWN, SHA256 and BLAKE3 are accepted digest-function numbers.
    #[test]
    fn digest_function_numbers(n in prop_oneof![-2..12i32, any::<i32>()]) {
        let supported = [ProtoFunction::Unknown, ProtoFunction::Sha256, ProtoFunction::Blake3];
        let got = DigestFunction::from_proto(n);
        prop_assert_eq!(got.is_ok(), supported.iter().any(|v| *v as i32 == n), "{}: {:?}", n, got);
        if let Ok(f) = got {
            prop_assert_eq!(DigestFunction::from_proto(f.to_proto()).expect("own number"), f);
            prop_assert_eq!(DigestFunction::from_name(f.name()), Some(f));
        }
    }

    /// Hashing in two pieces equals hashing at once, and the size is the byte count.
    #[test]
    fn streaming_hash_equals_one_shot(data in vec(any::<u8>(), 0..300), cut in any::<usize>(), f in function()) {
        let cut = cut % (data.len() + 1);
        let mut hasher = f.hasher();
        hasher.update(&data[..cut]);
        hasher.update(&data[cut..]);
        let d = hasher.finish();
        prop_assert_eq!(d, f.digest_of(&data));
        prop_assert_eq!(d.size(), data.len() as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Names, output paths and symlink targets.
// ---------------------------------------------------------------------------------------------

proptest! {
    /// `validate_name` accepts exactly a 1-255 byte name, not `.`/`..`, without `/` or NUL.
    #[test]
    fn name_matches_oracle(name in prop_oneof![component(), any::<String>()]) {
        let got = validate_name(&name);
        prop_assert_eq!(got.is_ok(), name_ok(&name), "{:?}: {:?}", name, got);
        if let Err(e) = got {
            prop_assert!(invalid(&e));
        }
    }

    /// `validate_output_path` accepts exactly a relative, normalised path; every prefix of an
    /// accepted path is accepted too.
    #[test]
    fn output_path_matches_oracle(path in path()) {
        let got = validate_output_path(&path);
        prop_assert_eq!(got.is_ok(), output_path_ok(&path), "{:?}: {:?}", path, got);
        if got.is_ok() {
            prop_assert!(!path.starts_with('/') && !path.ends_with('/') && !path.contains('\0'));
            prop_assert!(path.split('/').all(|c| !matches!(c, "" | "." | "..")));
            for (i, _) in path.match_indices('/') {
                prop_assert!(validate_output_path(&path[..i]).is_ok(), "prefix of {:?}", path);
            }
        }
    }

    /// `a/b` is a valid output path exactly when `a` and `b` both are.
    #[test]
    fn output_path_join_iff_both_valid(a in path(), b in path()) {
        let both = validate_output_path(&a).is_ok() && validate_output_path(&b).is_ok();
        prop_assert_eq!(validate_output_path(&format!("{a}/{b}")).is_ok(), both);
    }

    /// For a link at a valid path, a target is accepted exactly when it is non-empty, at most
    /// 4095 bytes, NUL-free, and absolute or never climbing above the root when resolved
    /// lexically from the link's directory; `check_output_symlink` agrees.
    #[test]
    fn symlink_target_matches_lexical_resolution(link in valid_path(), target in target()) {
        let got = validate_symlink_target(&link, &target);
        prop_assert_eq!(got.is_ok(), symlink_ok(&link, &target), "{:?} -> {:?}: {:?}", link, target, got);
        let checked = check_output_symlink(&link, &target);
        prop_assert_eq!(checked.is_ok(), got.is_ok());
        if let Err(e) = checked {
            prop_assert!(matches!(e, Error::FailedPrecondition(_)), "{:?}", e);
        }
        if got.is_ok() && !target.starts_with('/') {
            let resolved = resolve_relative(&link, &target).expect("inside the root");
            prop_assert!(resolved.iter().all(|c| !matches!(*c, "" | "." | "..")));
        }
    }

    /// Moving an accepted link deeper keeps it accepted.
    #[test]
    fn deeper_link_stays_accepted(base in valid_path(), link in valid_path(), target in target()) {
        if validate_symlink_target(&link, &target).is_ok() {
            let moved = format!("{base}/{link}");
            prop_assert!(validate_symlink_target(&moved, &target).is_ok(), "{:?} -> {:?}", moved, target);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ActionResult.
// ---------------------------------------------------------------------------------------------

/// Every symlink over the three lists, each distinct `(path, target)` once.
#[allow(deprecated)] // output_file_symlinks and output_directory_symlinks are REAPI v2.0's
fn all_symlinks(r: &ActionResult) -> Vec<&OutputSymlink> {
    let mut seen = HashSet::new();
    r.output_symlinks
        .iter()
        .chain(&r.output_file_symlinks)
        .chain(&r.output_directory_symlinks)
        .filter(|l| seen.insert((l.path.as_str(), l.target.as_str())))
        .collect()
}

fn action_result_ok(f: DigestFunction, r: &ActionResult) -> bool {
    let links = all_symlinks(r);
    let files = r.output_files.iter().map(|o| o.path.as_str());
    let dirs = r.output_directories.iter().map(|o| o.path.as_str());
    let paths: Vec<&str> = files
        .chain(dirs)
        .chain(links.iter().map(|l| l.path.as_str()))
        .collect();
    let unique: HashSet<&str> = paths.iter().copied().collect();
    let contents_ok = |o: &OutputFile| {
        o.contents.is_empty() || o.digest == Some(f.digest_of(&o.contents).to_proto())
    };
    paths.iter().all(|p| result_path_ok(p))
        && unique.len() == paths.len()
        && r.output_files
            .iter()
            .all(|o| wire_ok(o.digest.as_ref()) && contents_ok(o))
        && r.output_directories.iter().all(|o| {
            wire_ok(o.tree_digest.as_ref())
                && (o.root_directory_digest.is_none() || wire_ok(o.root_directory_digest.as_ref()))
        })
        && links.iter().all(|l| symlink_ok(&l.path, &l.target))
        && [&r.stdout_digest, &r.stderr_digest]
            .iter()
            .all(|d| d.is_none() || wire_ok(d.as_ref()))
}

#[allow(deprecated)] // output_file_symlinks and output_directory_symlinks are REAPI v2.0's
fn reversed(r: &ActionResult) -> ActionResult {
    let mut r = r.clone();
    r.output_files.reverse();
    r.output_directories.reverse();
    r.output_symlinks.reverse();
    r.output_file_symlinks.reverse();
    r.output_directory_symlinks.reverse();
    r
}

proptest! {
    /// `validate_action_result` accepts exactly results whose output paths are relative paths
    /// of `.`, `..` and valid names (as the client wrote them) and unique, whose symlinks obey
    /// the policy, whose digests are valid and whose inlined contents match; accepted paths
    /// have no empty component.
    #[test]
    fn action_result_matches_oracle(r in action_result(), f in function()) {
        let got = validate_action_result(f, &r);
        prop_assert_eq!(got.is_ok(), action_result_ok(f, &r), "{:?}: {:?}", r, got);
        match got {
            Ok(()) => {
                for o in &r.output_files {
                    prop_assert!(o.path.split('/').all(|c| !c.is_empty()));
                }
                for l in all_symlinks(&r) {
                    prop_assert!(l.target.starts_with('/') || resolve_relative(&l.path, &l.target).is_some());
                }
            }
            Err(e) => prop_assert!(invalid(&e), "{:?}", e),
        }
    }

    /// The verdict does not depend on list order and survives re-encoding.
    #[test]
    fn action_result_verdict_is_stable(r in action_result()) {
        let verdict = validate_action_result(F, &r).is_ok();
        prop_assert_eq!(validate_action_result(F, &reversed(&r)).is_ok(), verdict);
        let again = ActionResult::decode(r.encode_to_vec().as_slice()).expect("re-decodes");
        prop_assert_eq!(&again, &r);
        prop_assert_eq!(validate_action_result(F, &again).is_ok(), verdict);
    }
}

// ---------------------------------------------------------------------------------------------
// Command: the scheduler's checks, from core's pieces, and ActionBuilder's normalisation.
// ---------------------------------------------------------------------------------------------

#[allow(deprecated)] // output_files and output_directories: REAPI v2.0
fn outputs(c: &Command) -> impl Iterator<Item = &String> {
    c.output_paths
        .iter()
        .chain(&c.output_files)
        .chain(&c.output_directories)
}

/// The scheduler's `validate_command`, from core's pieces: the resolved working directory.
fn validate_command(c: &Command) -> Result<String, Error> {
    if c.arguments.first().is_none_or(String::is_empty) {
        return Err(Error::invalid("command.arguments is empty"));
    }
    validate_command_paths(c)
}

#[allow(deprecated)] // Command.platform
fn builder(c: &Command, reverse: bool) -> ActionBuilder {
    let mut env: Vec<_> = c
        .environment_variables
        .iter()
        .map(|e| (&e.name, &e.value))
        .collect();
    let mut outs: Vec<_> = c.output_paths.iter().collect();
    let mut props: Vec<_> = c
        .platform
        .iter()
        .flat_map(|p| &p.properties)
        .map(|p| (&p.name, &p.value))
        .collect();
    if reverse {
        env.reverse();
        outs.reverse();
        props.reverse();
    }
    let mut b =
        ActionBuilder::new(c.arguments.clone()).working_directory(c.working_directory.clone());
    for (name, value) in env {
        b = b.env(name, value);
    }
    for path in outs {
        b = b.output(path);
    }
    for (name, value) in props {
        b = b.property(name, value);
    }
    b
}

#[allow(deprecated)] // Command.platform
fn platform_pairs(c: &Command) -> Vec<(String, String)> {
    c.platform
        .iter()
        .flat_map(|p| &p.properties)
        .map(|p| (p.name.clone(), p.value.clone()))
        .collect()
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v
}

proptest! {
    /// The command checks accept exactly a non-empty program with a working directory and
    /// output paths that stay inside the input root when resolved lexically; outputs then
    /// resolve to normalised paths below the working directory.
    #[test]
    fn command_checks_match_oracle(c in command()) {
        let got = validate_command(&c);
        let wd = &c.working_directory;
        let resolved_wd = if wd.is_empty() { Some(Vec::new()) } else { resolve_below("", wd) };
        let expected = c.arguments.first().is_some_and(|a| !a.is_empty())
            && resolved_wd.as_ref().is_some_and(|r| {
                let r = r.join("/");
                outputs(&c).all(|p| resolve_below(&r, p).is_some())
            });
        prop_assert_eq!(got.is_ok(), expected, "{:?}: {:?}", c, got);
        if let Ok(wd) = &got {
            for p in outputs(&c) {
                let below = resolve_output_path(wd, p).expect("accepted");
                prop_assert!(below.is_empty() || validate_output_path(&below).is_ok(), "{:?}", below);
            }
        }
        let again = Command::decode(c.encode_to_vec().as_slice()).expect("re-decodes");
        prop_assert_eq!(validate_command(&again).is_ok(), got.is_ok());
    }

    /// `ActionBuilder` sorts and deduplicates output paths, sorts environment and platform,
    /// is idempotent, is independent of insertion order, and keeps the verdict.
    #[test]
    fn action_builder_normalises_idempotently(c in command()) {
        let built = builder(&c, false).command();
        let mut paths = sorted(&c.output_paths);
        paths.dedup();
        prop_assert_eq!(&built.output_paths, &paths);
        let env = |c: &Command| -> Vec<(String, String)> {
            c.environment_variables.iter().map(|e| (e.name.clone(), e.value.clone())).collect()
        };
        prop_assert_eq!(env(&built), sorted(&env(&c)));
        prop_assert_eq!(platform_pairs(&built), sorted(&platform_pairs(&c)));
        prop_assert_eq!(&builder(&built, false).command(), &built);
        let root = F.empty_digest();
        let (a, b) = (builder(&c, false).build(F, root), builder(&c, true).build(F, root));
        prop_assert_eq!((a.command_digest, a.action_digest), (b.command_digest, b.action_digest));
        let original = Command {
            arguments: c.arguments.clone(),
            output_paths: c.output_paths.clone(),
            working_directory: c.working_directory.clone(),
            ..Default::default()
        };
        prop_assert_eq!(validate_command(&built).is_ok(), validate_command(&original).is_ok());
    }
}

// ---------------------------------------------------------------------------------------------
// Output-directory trees.
// ---------------------------------------------------------------------------------------------

proptest! {
    /// `output_tree` accepts exactly a tree of valid directories whose children are all
    /// present and whose layout is within the limits; it counts entries like the oracle, holds
    /// exactly the tree's directories, and `tree_file_digests` lists each file digest once.
    #[test]
    fn output_tree_matches_oracle((f, tree) in tree()) {
        let limits = TreeLimits::default();
        let expected = tree_layout(f, &tree);
        let got = output_tree(f, tree.clone(), limits);
        match (&got, expected) {
            (Ok(input), TreeVerdict::Layout { entries, depth }) => {
                prop_assert!(entries <= limits.max_entries && depth <= limits.max_depth);
                prop_assert_eq!(input.check_limits(limits).expect("accepted"), entries);
                let root = tree.root.clone().unwrap_or_default();
                prop_assert_eq!(input.root.to_proto(), wire_of(f, &root));
                let held: HashSet<_> = tree.children.iter().chain([&root]).map(|d| wire_of(f, d)).collect();
                let got: HashSet<_> = input.directories.keys().map(Digest::to_proto).collect();
                prop_assert_eq!(got, held);
                let files = tree_file_digests(f, &tree).expect("accepted");
                prop_assert_eq!(files.iter().collect::<HashSet<_>>().len(), files.len());
            }
            (Err(e), TreeVerdict::Layout { entries, depth }) => {
                prop_assert!(entries > limits.max_entries || depth > limits.max_depth, "{}", e);
            }
            (Err(e), _) => prop_assert!(invalid(e), "{:?}", e),
            (Ok(_), verdict) => prop_assert!(false, "accepted a tree the oracle refuses: {:?}", verdict),
        }
    }

    /// `check_limits` succeeds at exactly the measured entries and depth and fails one below
    /// either; re-encoding the tree keeps the verdict.
    #[test]
    fn tree_limits_are_exact_and_verdict_stable((f, tree) in tree()) {
        let got = output_tree(f, tree.clone(), TreeLimits::default());
        let again = Tree::decode(tree.encode_to_vec().as_slice()).expect("re-decodes");
        prop_assert_eq!(output_tree(f, again, TreeLimits::default()).is_ok(), got.is_ok());
        let (Ok(input), TreeVerdict::Layout { entries, depth }) = (got, tree_layout(f, &tree)) else {
            return Ok(());
        };
        let exact = TreeLimits { max_entries: entries, max_depth: depth };
        prop_assert_eq!(input.check_limits(exact).expect("at the limits"), entries);
        let fewer = TreeLimits { max_entries: entries.saturating_sub(1), ..exact };
        prop_assert_eq!(input.check_limits(fewer).is_err(), entries > 0);
        let shallower = TreeLimits { max_depth: depth.saturating_sub(1), ..exact };
        prop_assert_eq!(input.check_limits(shallower).is_err(), depth > 0);
    }
}

/// A chain of `n` directories below the root, each holding the next under one name.
fn chain(n: i64) -> Tree {
    let link = |k| DirectoryNode {
        name: "d".into(),
        digest: Some(reapi::Digest {
            hash: String::new(),
            size_bytes: k,
        }),
    };
    let mut children: Vec<Directory> = (1..n)
        .map(|_| Directory {
            directories: vec![link(0)],
            ..Default::default()
        })
        .collect();
    children.push(Directory::default());
    let mut tree = Tree {
        root: Some(Directory {
            directories: vec![link(0)],
            ..Default::default()
        }),
        children,
    };
    link_children(F, &mut tree);
    tree
}

/// `levels` directories below the root, each holding the next under `width` names: `width`
/// to the power `levels` paths laid out from `levels` distinct directories.
fn bomb(levels: i64, width: usize) -> Tree {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let level = || Directory {
        directories: names[..width]
            .iter()
            .map(|n| DirectoryNode {
                name: (*n).into(),
                digest: Some(reapi::Digest {
                    hash: String::new(),
                    size_bytes: 0,
                }),
            })
            .collect(),
        ..Default::default()
    };
    let mut children: Vec<Directory> = (1..levels).map(|_| level()).collect();
    children.push(Directory::default());
    let mut tree = Tree {
        root: Some(level()),
        children,
    };
    link_children(F, &mut tree);
    tree
}

#[test]
fn hostile_nesting_is_measured_without_expanding() {
    let limits = TreeLimits::default();
    let deep = output_tree(F, chain(512), limits).expect("512 levels are allowed");
    assert_eq!(deep.check_limits(limits).expect("within"), 512);
    assert_eq!(
        tree_layout(F, &chain(600)),
        TreeVerdict::Layout {
            entries: 600,
            depth: 600
        }
    );
    let err = output_tree(F, chain(600), limits).expect_err("600 levels are too deep");
    assert!(
        invalid(&err) && err.to_string().contains("600 directories deep"),
        "{err}"
    );
    // 8^40 paths: the count saturates instead of overflowing, and the walk stays linear.
    let wide = bomb(40, 8);
    assert_eq!(
        tree_layout(F, &wide),
        TreeVerdict::Layout {
            entries: u64::MAX,
            depth: 40
        }
    );
    let err = output_tree(F, wide, limits).expect_err("too many entries");
    assert!(
        invalid(&err) && err.to_string().contains("entries laid out"),
        "{err}"
    );
    let small = output_tree(F, bomb(3, 2), limits).expect("2 + 4 + 8 entries");
    assert_eq!(small.check_limits(limits).expect("within"), 14);
}

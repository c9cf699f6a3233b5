//! Writes the seed corpora of the `digests`, `tree`, `action_result`, `command` and `paths`
//! fuzz targets under `seeds/<target>/`: a few meaningful inputs each, valid and hostile, the
//! proto ones as protobuf encodings. Run from `fuzz/`: `cargo run --example write_seeds`.

use std::path::Path;

use prost::Message;
use remexec_core::DigestFunction;
use remexec_core::reapi::digest_function::Value as ProtoFunction;
use remexec_core::reapi::{
    ActionResult, Command, Digest, Directory, DirectoryNode, FileNode, OutputDirectory, OutputFile,
    OutputSymlink, Platform, SymlinkNode, Tree, command::EnvironmentVariable, platform::Property,
};

const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("seed directory");
    std::fs::write(dir.join(name), bytes).expect("seed file");
}

fn digest(hash: &str, size: i64) -> Option<Digest> {
    Some(Digest {
        hash: hash.into(),
        size_bytes: size,
    })
}

fn digests() {
    let texts = [
        ("valid-hello", format!("{HELLO}/5")),
        ("valid-empty", format!("{EMPTY}/0")),
        ("max-size", format!("{HELLO}/9223372036854775807")),
        ("size-overflows-i64", format!("{HELLO}/9223372036854775808")),
        ("negative-size", format!("{HELLO}/-1")),
        ("leading-zero", format!("{HELLO}/05")),
        ("plus-sign", format!("{HELLO}/+5")),
        ("uppercase-hash", format!("{}/5", HELLO.to_uppercase())),
        ("short-hash", format!("{}/5", &HELLO[1..])),
        ("trailing-segment", format!("{HELLO}/5/x")),
        ("name-blake3", "blake3".into()),
    ];
    for (name, text) in texts {
        write("digests", name, text.as_bytes());
    }
    write(
        "digests",
        "proto-valid",
        &digest(HELLO, 5).unwrap_or_default().encode_to_vec(),
    );
    write(
        "digests",
        "proto-negative",
        &digest(HELLO, -1).unwrap_or_default().encode_to_vec(),
    );
    let upper = digest(&HELLO.to_uppercase(), 5).unwrap_or_default();
    write("digests", "proto-uppercase", &upper.encode_to_vec());
    write(
        "digests",
        "function-blake3",
        &(ProtoFunction::Blake3 as i32).to_le_bytes(),
    );
    write(
        "digests",
        "function-sha1",
        &(ProtoFunction::Sha1 as i32).to_le_bytes(),
    );
}

fn file(name: &str) -> FileNode {
    FileNode {
        name: name.into(),
        digest: digest(HELLO, 5),
        ..Default::default()
    }
}

/// A child link, resolved by `remexec_fuzz::link_children`: empty hash, size = child index.
fn sub(name: &str, child: i64) -> DirectoryNode {
    DirectoryNode {
        name: name.into(),
        digest: digest("", child),
    }
}

fn link(name: &str, target: &str) -> SymlinkNode {
    SymlinkNode {
        name: name.into(),
        target: target.into(),
        ..Default::default()
    }
}

fn dir(
    files: Vec<FileNode>,
    directories: Vec<DirectoryNode>,
    symlinks: Vec<SymlinkNode>,
) -> Directory {
    Directory {
        files,
        directories,
        symlinks,
        ..Default::default()
    }
}

fn trees() {
    let leaf = dir(vec![file("f")], vec![], vec![]);
    let seeds = [
        (
            "empty-root",
            Tree {
                root: Some(Directory::default()),
                children: vec![],
            },
        ),
        (
            "simple",
            Tree {
                root: Some(dir(
                    vec![file("a")],
                    vec![sub("sub", 0)],
                    vec![link("l", "a")],
                )),
                children: vec![leaf.clone()],
            },
        ),
        (
            "diamond",
            Tree {
                root: Some(dir(vec![], vec![sub("x", 0), sub("z", 1)], vec![])),
                children: vec![dir(vec![], vec![sub("y", 1)], vec![]), leaf.clone()],
            },
        ),
        (
            "bomb-4-pow-12",
            Tree {
                root: Some(dir(
                    vec![],
                    ["a", "b", "c", "d"].map(|n| sub(n, 0)).to_vec(),
                    vec![],
                )),
                children: (1..12)
                    .map(|i| {
                        dir(
                            vec![file("f")],
                            ["a", "b", "c", "d"].map(|n| sub(n, i)).to_vec(),
                            vec![],
                        )
                    })
                    .chain([leaf.clone()])
                    .collect(),
            },
        ),
        (
            "chain-520-deep",
            Tree {
                root: Some(dir(vec![], vec![sub("d", 0)], vec![])),
                children: (1..520)
                    .map(|i| dir(vec![], vec![sub("d", i)], vec![]))
                    .chain([Directory::default()])
                    .collect(),
            },
        ),
        (
            "missing-child",
            Tree {
                root: Some(dir(
                    vec![],
                    vec![DirectoryNode {
                        name: "x".into(),
                        digest: digest(EMPTY, 7),
                    }],
                    vec![],
                )),
                children: vec![],
            },
        ),
        (
            "unsorted",
            Tree {
                root: Some(dir(vec![file("b"), file("a")], vec![], vec![])),
                children: vec![],
            },
        ),
        (
            "dotdot-name",
            Tree {
                root: Some(dir(vec![], vec![sub("..", 0)], vec![])),
                children: vec![leaf],
            },
        ),
    ];
    for (name, tree) in seeds {
        write("tree", name, &tree.encode_to_vec());
    }
}

fn out_file(path: &str, contents: &[u8]) -> OutputFile {
    let d = DigestFunction::Sha256.digest_of(b"x").to_proto();
    OutputFile {
        path: path.into(),
        digest: Some(d),
        contents: contents.to_vec(),
        ..Default::default()
    }
}

fn out_link(path: &str, target: &str) -> OutputSymlink {
    OutputSymlink {
        path: path.into(),
        target: target.into(),
        ..Default::default()
    }
}

#[allow(deprecated)] // output_file_symlinks: REAPI v2.0
fn action_results() {
    let valid = ActionResult {
        output_files: vec![out_file("out/a", b"x")],
        output_directories: vec![OutputDirectory {
            path: "out/d".into(),
            tree_digest: digest(HELLO, 5),
            ..Default::default()
        }],
        output_symlinks: vec![
            out_link("out/l", "a"),
            out_link("out/py", "/usr/bin/python3"),
        ],
        stdout_digest: digest(EMPTY, 0),
        ..Default::default()
    };
    let seeds = [
        ("empty", ActionResult::default()),
        (
            "v2.0-repeats-symlink",
            ActionResult {
                output_file_symlinks: vec![out_link("out/l", "a")],
                ..valid.clone()
            },
        ),
        (
            "conflicting-symlink",
            ActionResult {
                output_file_symlinks: vec![out_link("out/l", "b")],
                ..valid.clone()
            },
        ),
        (
            "escaping-symlink",
            ActionResult {
                output_symlinks: vec![out_link("out/l", "../../x")],
                ..Default::default()
            },
        ),
        (
            "dotdot-path",
            ActionResult {
                output_files: vec![out_file("a/../../x", b"")],
                ..Default::default()
            },
        ),
        (
            "file-and-dir-same-path",
            ActionResult {
                output_files: vec![out_file("out/d", b"")],
                ..valid.clone()
            },
        ),
        (
            "contents-mismatch",
            ActionResult {
                output_files: vec![out_file("a", b"y")],
                ..Default::default()
            },
        ),
        ("valid", valid),
    ];
    for (name, result) in seeds {
        write("action_result", name, &result.encode_to_vec());
    }
}

#[allow(deprecated)] // output_files, output_directories and platform: REAPI v2.0-v2.1
fn commands() {
    let env = |n: &str, v: &str| EnvironmentVariable {
        name: n.into(),
        value: v.into(),
    };
    let prop = |n: &str, v: &str| Property {
        name: n.into(),
        value: v.into(),
    };
    let valid = Command {
        arguments: vec!["/bin/echo".into(), "hi".into()],
        environment_variables: vec![env("LANG", "C"), env("PATH", "/bin")],
        output_paths: vec!["out/a".into(), "out/b".into()],
        working_directory: "sub".into(),
        platform: Some(Platform {
            properties: vec![prop("OSFamily", "linux")],
        }),
        ..Default::default()
    };
    let seeds = [
        (
            "v2.0-outputs",
            Command {
                output_paths: vec![],
                output_files: vec!["a".into()],
                output_directories: vec!["d".into()],
                ..valid.clone()
            },
        ),
        (
            "unsorted-duplicates",
            Command {
                environment_variables: vec![env("PATH", "/bin"), env("A", "2"), env("A", "1")],
                output_paths: vec!["z".into(), "a".into(), "z".into()],
                platform: Some(Platform {
                    properties: vec![prop("b", "1"), prop("a", "2"), prop("a", "1")],
                }),
                ..valid.clone()
            },
        ),
        (
            "absolute-workdir",
            Command {
                working_directory: "/abs".into(),
                ..valid.clone()
            },
        ),
        (
            "dotdot-output",
            Command {
                output_paths: vec!["../x".into()],
                ..valid.clone()
            },
        ),
        (
            "empty-program",
            Command {
                arguments: vec![String::new()],
                ..valid.clone()
            },
        ),
        ("valid", valid),
    ];
    for (name, command) in seeds {
        write("command", name, &command.encode_to_vec());
    }
}

fn paths() {
    let long = "n".repeat(256);
    let too_long_target = "a/".repeat(2048);
    let seeds: [(&str, Vec<&str>); 9] = [
        ("climb-within", vec!["a/b/link", "../x", "deep"]),
        ("climb-out", vec!["link", "../etc/passwd", ""]),
        ("dot-and-back", vec!["a/link", "./b/../c", "x/y"]),
        ("absolute-target", vec!["link", "/usr/bin/python3", "d"]),
        ("empty-component", vec!["a//b", "", "c"]),
        ("not-normalised-link", vec!["./link", "../x", "a"]),
        ("name-256-bytes", vec![&long, "x", "a"]),
        ("nul", vec!["a\0b", "x\0y", "c"]),
        ("target-too-long", vec!["l", &too_long_target, "a"]),
    ];
    for (name, parts) in seeds {
        let bytes: Vec<u8> = parts
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                let sep = (i > 0).then_some(0xFF);
                sep.into_iter().chain(p.bytes())
            })
            .collect();
        write("paths", name, &bytes);
    }
}

fn main() {
    digests();
    trees();
    action_results();
    commands();
    paths();
}

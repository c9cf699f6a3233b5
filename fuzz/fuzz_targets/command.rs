//! `Command` checks built from core's pieces, against an independent oracle, and
//! `client::ActionBuilder`'s normalisation of a `Command`.
//!
//! The scheduler's `validate_command` is private to remexec-scheduler; its path checks are
//! core's `merkle::validate_command_paths`, which is checked here with the scheduler's check
//! of the program name.
//!
//! Properties, for any bytes that decode as a `Command`:
//! - the check accepts exactly when the program name is non-empty, the working directory is
//!   empty or a path (of `.`, `..` and valid names) that stays inside the input root, and every
//!   output path, resolved lexically below the working directory, stays inside it too;
//! - for an accepted command, the resolved working directory and every output path resolved
//!   below it (where the worker creates and collects it) are empty or normalised, with no `..`;
//! - `ActionBuilder` built from the command's arguments, environment, output paths, working
//!   directory and platform yields a `Command` whose output paths are the same set, strictly
//!   sorted; whose environment and platform are the same multisets, sorted; which is a fixed
//!   point (building again from it gives it back); whose digests do not depend on the order
//!   the pieces were added in; and whose verdict equals that of the command's `output_paths`;
//! - re-encoding the command gives an equal command and the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use remexec_core::client::ActionBuilder;
use remexec_core::merkle::{resolve_output_path, validate_command_paths, validate_output_path};
use remexec_core::reapi::Command;
use remexec_core::{DigestFunction, Error, Result};
use remexec_fuzz::{output_path_ok, resolve_below};

/// The scheduler's check, from core's pieces: the resolved working directory.
fn validate(command: &Command) -> Result<String> {
    if command.arguments.first().is_none_or(String::is_empty) {
        return Err(Error::invalid("command.arguments is empty"));
    }
    validate_command_paths(command)
}

/// Every output path, REAPI v2.1's and v2.0's.
#[allow(deprecated)] // output_files and output_directories: REAPI v2.0
fn outputs(command: &Command) -> impl Iterator<Item = &String> {
    command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories)
}

fn expected(command: &Command) -> bool {
    let wd = &command.working_directory;
    let Some(resolved) = (if wd.is_empty() {
        Some(Vec::new())
    } else {
        resolve_below("", wd)
    }) else {
        return false;
    };
    let resolved = resolved.join("/");
    command.arguments.first().is_some_and(|a| !a.is_empty())
        && outputs(command).all(|p| resolve_below(&resolved, p).is_some())
}

/// The builder for `command`'s pieces, added in order or in reverse.
#[allow(deprecated)] // Command.platform
fn builder(command: &Command, reverse: bool) -> ActionBuilder {
    let mut b = ActionBuilder::new(command.arguments.clone());
    let mut env: Vec<_> = command
        .environment_variables
        .iter()
        .map(|e| (&e.name, &e.value))
        .collect();
    let mut outs: Vec<_> = command.output_paths.iter().collect();
    let mut props: Vec<_> = command
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
    for (name, value) in env {
        b = b.env(name, value);
    }
    for path in outs {
        b = b.output(path);
    }
    for (name, value) in props {
        b = b.property(name, value);
    }
    b.working_directory(command.working_directory.clone())
}

fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v
}

#[allow(deprecated)] // Command.platform
fn check_builder(command: &Command) {
    let built = builder(command, false).command();
    let mut paths = sorted(&command.output_paths);
    paths.dedup();
    assert_eq!(
        built.output_paths, paths,
        "output paths: the same set, strictly sorted"
    );
    let pairs = |c: &Command| -> Vec<(String, String)> {
        c.environment_variables
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect()
    };
    assert_eq!(
        pairs(&built),
        sorted(&pairs(command)),
        "environment: same multiset, sorted"
    );
    let props = |c: &Command| -> Vec<(String, String)> {
        c.platform
            .iter()
            .flat_map(|p| &p.properties)
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect()
    };
    assert_eq!(
        props(&built),
        sorted(&props(command)),
        "platform: same multiset, sorted"
    );
    assert_eq!(
        builder(&built, false).command(),
        built,
        "normalisation is idempotent"
    );
    let f = DigestFunction::Sha256;
    let root = f.empty_digest();
    let (a, b) = (
        builder(command, false).build(f, root),
        builder(command, true).build(f, root),
    );
    assert_eq!(
        (a.command_digest, a.action_digest),
        (b.command_digest, b.action_digest)
    );
    assert_eq!(a.command_digest, f.digest_of(&a.command.encode_to_vec()));
    let only_paths = Command {
        arguments: command.arguments.clone(),
        output_paths: command.output_paths.clone(),
        working_directory: command.working_directory.clone(),
        ..Default::default()
    };
    assert_eq!(validate(&built).is_ok(), validate(&only_paths).is_ok());
}

fuzz_target!(|data: &[u8]| {
    let Ok(command) = Command::decode(data) else {
        return;
    };
    let got = validate(&command);
    assert_eq!(got.is_ok(), expected(&command), "{command:?}: {got:?}");
    match &got {
        Ok(wd) => {
            assert!(wd.is_empty() || output_path_ok(wd), "{wd:?}");
            for path in outputs(&command) {
                let below = resolve_output_path(wd, path).expect("accepted");
                assert!(
                    below.is_empty() || (output_path_ok(&below) && validate_output_path(&below).is_ok()),
                    "{below:?}"
                );
                assert_eq!(resolve_below(wd, path).map(|c| c.join("/")), Some(below));
            }
        }
        Err(e) => assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}"),
    }
    check_builder(&command);
    let again = Command::decode(command.encode_to_vec().as_slice()).expect("re-decodes");
    assert_eq!(again, command);
    assert_eq!(validate(&again).is_ok(), got.is_ok());
});

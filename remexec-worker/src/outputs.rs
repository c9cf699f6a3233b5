//! Collecting an action's outputs into the CAS and an `ActionResult`.
//!
//! One blocking pass walks the declared outputs without following symlinks, opens only regular
//! files (never a FIFO or a device), hashes them and builds the `Directory` and `Tree`
//! messages, into core's [`UploadPlan`]. Then one `reference` per batch asks the CAS which of
//! those blobs it lacks, and only those are uploaded, each file opened again the same careful
//! way. `remexec exec --input` uploads its input root with the same engine
//! ([`remexec_core::client::upload_directory`]).

use std::path::Path;

use remexec_core::client::{ScanOptions, UploadPlan, check_output_symlink, read_symlink};
use remexec_core::fs::lookup_beneath;
use remexec_core::merkle::{encode_message, resolve_output_path, resolve_working_directory};
use remexec_core::reapi::command::OutputDirectoryFormat;
use remexec_core::reapi::{ActionResult, Command, OutputDirectory, OutputFile, OutputSymlink};
use remexec_core::{BlobStore, DigestFunction, Error, Result};

use crate::blocking::{StopFlag, blocking};

/// The declared outputs: `(path, declared as a directory)`.
#[allow(deprecated)] // output_files and output_directories are REAPI v2.0's
fn declared_outputs(command: &Command) -> Vec<(String, bool)> {
    if !command.output_paths.is_empty() {
        return command
            .output_paths
            .iter()
            .map(|p| (p.clone(), false))
            .collect();
    }
    command
        .output_files
        .iter()
        .map(|p| (p.clone(), false))
        .chain(command.output_directories.iter().map(|p| (p.clone(), true)))
        .collect()
}

/// Scans the declared outputs (blocking) into the output fields of an `ActionResult`.
#[allow(deprecated)] // the *_symlinks fields are REAPI v2.0's
fn scan_outputs(
    f: DigestFunction,
    root: &Path,
    declared: &[(String, String, bool)],
    (v2_1, directories): (bool, bool),
    stop: &StopFlag,
) -> Result<(ActionResult, UploadPlan)> {
    let (mut result, mut plan) = (ActionResult::default(), UploadPlan::default());
    for (rel, resolved, declared_dir) in declared {
        stop.check()?;
        // An output below a symlink, or missing, was not produced.
        let Some(path) = lookup_beneath(root, resolved) else {
            continue;
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        if meta.file_type().is_symlink() {
            let target = read_symlink(&path)?;
            check_output_symlink(rel, &target)?;
            let link = OutputSymlink {
                path: rel.clone(),
                target,
                ..Default::default()
            };
            if !v2_1 {
                if *declared_dir {
                    result.output_directory_symlinks.push(link.clone())
                } else {
                    result.output_file_symlinks.push(link.clone())
                }
            }
            result.output_symlinks.push(link);
        } else if meta.is_dir() {
            let check = ScanOptions::checking_symlinks();
            // Every Directory of the tree goes to the CAS with it: a client that asks for them
            // (`output_directory_format`) gets the root's digest as well as the Tree's.
            let (root, tree) = plan.scan_tree(f, &path, rel, check, &|| stop.check())?;
            let (tree_digest, bytes) = encode_message(f, &tree);
            plan.push_blob(tree_digest, bytes);
            result.output_directories.push(OutputDirectory {
                path: rel.clone(),
                tree_digest: Some(tree_digest.to_proto()),
                root_directory_digest: directories.then(|| root.to_proto()),
                ..Default::default()
            });
        } else if let Some((digest, is_executable)) = plan.scan_file(f, &path)? {
            result.output_files.push(OutputFile {
                path: rel.clone(),
                digest: Some(digest.to_proto()),
                is_executable,
                ..Default::default()
            });
        }
        // A FIFO, socket or device was not produced.
    }
    Ok((result, plan))
}

/// Collects the outputs `command` declares into `result`: each is resolved against the
/// command's working directory below the input root `root`, and reported under the path the
/// command gave (`.` and `..` segments included, as long as the path stays inside `root`:
/// `InvalidArgument` otherwise).
///
/// REAPI v2.1+ `output_paths` and v2.0 `output_files`/`output_directories` are both honoured.
/// An output directory always has its `Tree`; with `output_directory_format` other than
/// `TREE_ONLY`, also its root `Directory`'s digest (every `Directory` is in the CAS).
/// Missing outputs, outputs below a symlink, and FIFOs, sockets and devices are not produced;
/// symlinks are reported as symlinks, never followed, and must pass
/// [`remexec_core::merkle::validate_symlink_target`] (`FailedPrecondition` naming the symlink otherwise).
#[allow(deprecated)] // the *_symlinks fields are REAPI v2.0's
pub async fn collect_outputs(
    cas: &dyn BlobStore,
    instance: &str,
    f: DigestFunction,
    command: &Command,
    root: &Path,
    result: &mut ActionResult,
) -> Result<()> {
    let workdir = resolve_working_directory(&command.working_directory)?;
    let mut declared = Vec::new();
    for (path, dir) in declared_outputs(command) {
        declared.push((path.clone(), resolve_output_path(&workdir, &path)?, dir));
    }
    let v2_1 = !command.output_paths.is_empty();
    // DIRECTORY_ONLY is served as TREE_AND_DIRECTORY, the superset REAPI allows: the Action
    // Cache and older clients read the Tree.
    let directories = command.output_directory_format != OutputDirectoryFormat::TreeOnly as i32;
    let root = root.to_path_buf();
    let stop = StopFlag::default();
    let _stop = stop.set_on_drop();
    let formats = (v2_1, directories);
    let (found, plan) = blocking(move || scan_outputs(f, &root, &declared, formats, &stop)).await?;
    plan.upload(cas, instance).await?;
    result.output_files.extend(found.output_files);
    result.output_directories.extend(found.output_directories);
    result.output_symlinks.extend(found.output_symlinks);
    result
        .output_file_symlinks
        .extend(found.output_file_symlinks);
    result
        .output_directory_symlinks
        .extend(found.output_directory_symlinks);
    Ok(())
}

//! Loading an action and checking that everything it needs is in the CAS.

use prost::Message;
use remexec_core::merkle::{TreeLimits, validate_command_paths, walk_tree};
use remexec_core::reapi::{Action, Command};
use remexec_core::{BlobStore, BlobStoreExt, Digest, Error, Result};

use crate::SchedulerConfig;

/// Largest `Action` or `Command` message accepted.
const MAX_MESSAGE: u64 = 16 * 1024 * 1024;
/// Digests per FindMissingBlobs call to the store.
const FIND_BATCH: usize = 10_000;

/// An action ready to queue, or the blobs that must be uploaded first.
#[derive(Debug)]
pub(crate) enum Loaded {
    Ready(Box<(Action, Command)>),
    Missing(Vec<Digest>),
}

async fn fetch<M: Message + Default>(
    cas: &dyn BlobStore,
    instance: &str,
    digest: Digest,
    what: &str,
) -> Result<Option<M>> {
    let Some(bytes) = cas.get_bytes(instance, digest, MAX_MESSAGE).await? else {
        return Ok(None);
    };
    M::decode(bytes).map(Some).map_err(|e| {
        Error::InvalidArgument(remexec_core::Message::caused_by(
            format!("{what} {digest} does not decode"),
            e,
        ))
    })
}

/// Fetches and validates the Action and Command, and finds every missing input blob. Every
/// blob the action needs that is there is [referenced](BlobStore::reference): it stays in the
/// CAS while the action is queued and runs.
pub(crate) async fn load(
    cas: &dyn BlobStore,
    instance: &str,
    action_digest: Digest,
    config: &SchedulerConfig,
) -> Result<Loaded> {
    let f = action_digest.function();
    let Some(action) = fetch::<Action>(cas, instance, action_digest, "action").await? else {
        return Ok(Loaded::Missing(vec![action_digest]));
    };
    let command_digest =
        Digest::from_field(f, action.command_digest.as_ref(), "action.command_digest")?;
    let root = Digest::from_field(
        f,
        action.input_root_digest.as_ref(),
        "action.input_root_digest",
    )?;
    let command = fetch::<Command>(cas, instance, command_digest, "command").await?;
    let mut missing = Vec::new();
    let mut held = vec![action_digest];
    match command {
        Some(_) => held.push(command_digest),
        None => missing.push(command_digest),
    }
    missing.extend(missing_inputs(cas, instance, root, held, config.tree_limits).await?);
    let Some(command) = command else {
        return Ok(Loaded::Missing(missing));
    };
    if !missing.is_empty() {
        return Ok(Loaded::Missing(missing));
    }
    validate_command(&command, config.max_command_size)?;
    Ok(Loaded::Ready(Box::new((action, command))))
}

fn validate_command(command: &Command, max_size: usize) -> Result<()> {
    if command.arguments.is_empty() || command.arguments[0].is_empty() {
        return Err(Error::invalid("command.arguments is empty"));
    }
    let size: usize = command.arguments.iter().map(|a| a.len() + 1).sum::<usize>()
        + command
            .environment_variables
            .iter()
            .map(|v| v.name.len() + v.value.len() + 2)
            .sum::<usize>();
    if size > max_size {
        return Err(Error::invalid(format!(
            "command: its arguments and environment take {size} bytes, over the max_command_size limit of {max_size}"
        )));
    }
    validate_command_paths(command)?;
    Ok(())
}

/// Walks the input tree ([`walk_tree`], several directories at a time); returns every
/// directory and file blob it needs that the CAS lacks, and references the rest, with `held`
/// (blobs already read).
async fn missing_inputs(
    cas: &dyn BlobStore,
    instance: &str,
    root: Digest,
    mut held: Vec<Digest>,
    limits: TreeLimits,
) -> Result<Vec<Digest>> {
    let walk = walk_tree(cas, instance, root, limits.max_entries).await?;
    let mut missing = walk.missing;
    if missing.is_empty() {
        // Refuse a tree that would be too large laid out (a "tree bomb") before it is queued.
        walk.tree.check_limits(limits)?;
    }
    held.extend(walk.tree.directories.keys().filter(|d| !d.is_empty_blob()));
    held.extend(walk.files);
    for chunk in held.chunks(FIND_BATCH) {
        missing.extend(cas.reference(instance, chunk).await?);
    }
    Ok(missing)
}

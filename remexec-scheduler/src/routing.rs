//! [`Routing`]: which scheduler of a cluster owns an action or an operation, so that any
//! scheduler accepts Execute, WaitExecution and the Operations calls, and identical actions in
//! flight merge cluster-wide.
//!
//! Each action is owned by one live scheduler, chosen by rendezvous hashing ([`Placement`])
//! over their names (URLs); an operation's name carries its owner's id
//! (`operations/{id}/{uuid}`, [`Member::id_of`]). A scheduler forwards a call it does not own
//! to the owner's public services with the caller's metadata (so its credentials), marked
//! [`ROUTED`] so that the owner runs it whatever its own view says: views that briefly
//! disagree cost a merge, never a loop.

use parking_lot::Mutex;
use remexec_core::Digest;
use remexec_core::client::{Channels, ClientTls};
use remexec_core::membership::Member;
use remexec_core::placement::Placement;
use tokio::sync::watch;
use tonic::transport::Channel;

/// The metadata key that marks a call a scheduler forwarded.
pub const ROUTED: &str = "x-remexec-routed";

/// See the module docs.
#[derive(Debug)]
pub struct Routing {
    name: String,
    id: String,
    members: watch::Receiver<Vec<Member>>,
    tls: ClientTls,
    channels: Mutex<Channels>,
}

impl Routing {
    /// The routing of scheduler `name` (its URL, as its peers list it) among `members`, the
    /// live schedulers (this one may be among them or not), reached with `tls`.
    pub fn new(
        name: impl Into<String>,
        members: watch::Receiver<Vec<Member>>,
        tls: ClientTls,
    ) -> Self {
        let name = name.into();
        Self {
            id: Member::id_of(&name),
            name,
            members,
            tls,
            channels: Mutex::default(),
        }
    }

    /// This scheduler's id, the operation-name segment of the operations it owns.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The channel to the scheduler that owns `action`, or `None` if this one does.
    pub fn owner(&self, action: &Digest) -> Option<(String, Channel)> {
        let members = self.members.borrow().clone();
        let names = members
            .iter()
            .map(|m| m.name.clone())
            .chain([self.name.clone()]);
        let owner = Placement::new(names)
            .replicas(action, 1)
            .first()?
            .to_string();
        if owner == self.name {
            return None;
        }
        let member = members.into_iter().find(|m| m.name == owner)?;
        self.channel(&member).map(|c| (owner, c))
    }

    /// The channel to the live scheduler that owns operation `name`, or `None` if this one
    /// does, or no live one does (the caller then answers NOT_FOUND itself).
    pub fn operation_owner(&self, name: &str) -> Option<(String, Channel)> {
        let id = name.strip_prefix("operations/")?.split('/').next()?;
        if id == self.id {
            return None;
        }
        let members = self.members.borrow().clone();
        let member = members.into_iter().find(|m| Member::id_of(&m.name) == id)?;
        self.channel(&member).map(|c| (member.name, c))
    }

    fn channel(&self, member: &Member) -> Option<Channel> {
        let members = self.members.borrow().clone();
        let mut channels = self.channels.lock();
        channels
            .update(members.iter().map(|m| &m.url), &self.tls)
            .get(&member.url)
            .cloned()
    }
}

/// `request` as a call to forward: the caller's metadata, marked [`ROUTED`].
pub(crate) fn forwarded<T>(request: tonic::Request<T>) -> tonic::Request<T> {
    let (metadata, _, message) = request.into_parts();
    let mut forwarded = tonic::Request::from_parts(metadata, Default::default(), message);
    forwarded
        .metadata_mut()
        .insert(ROUTED, tonic::metadata::MetadataValue::from_static("1"));
    forwarded
}

/// Whether another scheduler forwarded this call (it must then be served here).
pub(crate) fn was_routed<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(ROUTED)
}

//! [`ClusterService`]: remexec's `remexec.cluster.v1.Cluster` service over a
//! [`ReplicatedStore`]: `Locate` (which members hold each blob) and `Status` (the members and
//! the copies still to make).
//!
//! A scheduler serves it as a router: `Status` asks every member's own `Status` and lists the
//! roster's members it cannot reach as `unreachable`, and those that left as `lost`. A worker serving its CAS serves it as a member: `Status` gives
//! its own figures. `Locate` is the same for both: every member is asked.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use remexec_core::client::{Channels, ClientTls};
use remexec_core::membership::Member;
use remexec_core::{BlobStore, Digest, Error, validate_instance_name};
use remexec_proto::cluster::v1::cluster_client::ClusterClient;
use remexec_proto::cluster::v1::cluster_server::{Cluster, ClusterServer};
use remexec_proto::cluster::v1::{
    LocateRequest, LocateResponse, Location, MemberStatus, StatusRequest, StatusResponse,
    WatchRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::store::replicated::ReplicatedStore;
use crate::store::replicated::repair::Repairer;
use remexec_core::ListBlobs;

/// Most digests in one `Locate`.
const MAX_LOCATE: usize = 10_000;
/// How long a member that left is listed as `lost`.
const LOST_FOR: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long a router waits for a member's own `Status`.
const MEMBER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whose figures `Status` gives.
#[derive(Debug)]
enum Role {
    /// A scheduler: every member's, asked over gRPC.
    Router {
        tls: ClientTls,
        channels: tokio::sync::Mutex<Channels>,
        /// Every member seen live in the last [`LOST_FOR`], by name: its URL and when.
        seen: Mutex<BTreeMap<String, (String, std::time::Instant)>>,
    },
    /// One member: its own.
    Member {
        name: String,
        url: String,
        local: Arc<dyn ListBlobs>,
        repairer: Arc<Repairer>,
    },
}

/// The `Cluster` service. See the module docs.
#[derive(Debug, Clone)]
pub struct ClusterService {
    store: Arc<ReplicatedStore>,
    members: watch::Receiver<Vec<Member>>,
    role: Arc<Role>,
    schedulers: Option<(String, watch::Receiver<Vec<Member>>)>,
    /// The storage roster, whose members that are not live `Status` lists as `unreachable`.
    roster: Option<watch::Receiver<Vec<Member>>>,
    /// A worker's keep time, which its `Status` reports.
    keep_referenced: Option<std::time::Duration>,
}

impl ClusterService {
    /// A scheduler's service: `members` is the view `store` follows.
    pub fn router(
        store: Arc<ReplicatedStore>,
        members: watch::Receiver<Vec<Member>>,
        tls: ClientTls,
    ) -> Self {
        let role = Role::Router {
            tls,
            channels: tokio::sync::Mutex::default(),
            seen: Mutex::default(),
        };
        Self {
            store,
            members,
            role: Arc::new(role),
            schedulers: None,
            roster: None,
            keep_referenced: None,
        }
    }

    /// Lists the members of `roster` (a storage
    /// [`Membership::roster`](remexec_core::membership::Membership::roster)) that are not
    /// live as `unreachable` in `Status`.
    pub fn with_roster(mut self, roster: watch::Receiver<Vec<Member>>) -> Self {
        self.roster = Some(roster);
        self
    }

    /// Lists `schedulers`, the live schedulers sharing the Action Cache, and this scheduler's
    /// own `name` among them, in `Status`.
    pub fn with_schedulers(
        mut self,
        name: String,
        schedulers: watch::Receiver<Vec<Member>>,
    ) -> Self {
        self.schedulers = Some((name, schedulers));
        self
    }

    /// A worker's service: member `name` at `url`, holding `local`, re-replicated by
    /// `repairer`.
    pub fn member(
        store: Arc<ReplicatedStore>,
        members: watch::Receiver<Vec<Member>>,
        name: String,
        url: String,
        local: Arc<dyn ListBlobs>,
        repairer: Arc<Repairer>,
    ) -> Self {
        Self {
            store,
            members,
            role: Arc::new(Role::Member {
                name,
                url,
                local,
                repairer,
            }),
            schedulers: None,
            roster: None,
            keep_referenced: None,
        }
    }

    /// Reports `keep` as the worker's keep time in `Status` (a worker's port).
    pub fn with_keep_referenced(mut self, keep: std::time::Duration) -> Self {
        self.keep_referenced = Some(keep);
        self
    }

    /// The tonic service.
    pub fn into_service(self) -> ClusterServer<Self> {
        ClusterServer::new(self)
    }

    /// Every live member's status (asked over gRPC), then those seen before as `lost`.
    async fn route_status(
        &self,
        tls: &ClientTls,
        channels: &tokio::sync::Mutex<Channels>,
        seen: &Mutex<BTreeMap<String, (String, std::time::Instant)>>,
    ) -> Vec<MemberStatus> {
        let live = self.members.borrow().clone();
        {
            let now = std::time::Instant::now();
            let mut seen = seen.lock();
            seen.extend(live.iter().map(|m| (m.name.clone(), (m.url.clone(), now))));
            seen.retain(|_, (_, at)| now.duration_since(*at) < LOST_FOR);
        }
        let clients: Vec<(Member, Option<tonic::transport::Channel>)> = {
            let mut channels = channels.lock().await;
            let open = channels.update(live.iter().map(|m| &m.url), tls);
            live.iter()
                .map(|m| (m.clone(), open.get(&m.url).cloned()))
                .collect()
        };
        let asks = clients.into_iter().map(|(member, channel)| async move {
            let failed = |error: String| MemberStatus {
                name: member.name.clone(),
                url: member.url.clone(),
                state: "live".into(),
                error,
                ..MemberStatus::default()
            };
            let Some(channel) = channel else {
                return failed("cannot reach it".into());
            };
            let mut client = ClusterClient::new(channel);
            let call = client.status(StatusRequest {});
            match tokio::time::timeout(MEMBER_TIMEOUT, call).await {
                Ok(Ok(answer)) => match answer.into_inner().members.into_iter().next() {
                    Some(own) => MemberStatus {
                        name: member.name.clone(),
                        url: member.url.clone(),
                        state: "live".into(),
                        ..own
                    },
                    None => failed("it gave no status".into()),
                },
                Ok(Err(status)) => failed(status.message().to_string()),
                Err(_) => failed(format!("no answer within {MEMBER_TIMEOUT:?}")),
            }
        });
        let mut statuses = futures::future::join_all(asks).await;
        let live_names: HashSet<&str> = live.iter().map(|m| m.name.as_str()).collect();
        let roster = self.roster.as_ref().map(|r| r.borrow().clone());
        let away: Vec<Member> = roster.into_iter().flatten().collect();
        let away: Vec<&Member> = away
            .iter()
            .filter(|m| !live_names.contains(m.name.as_str()))
            .collect();
        let listed: HashSet<&str> = away.iter().map(|m| m.name.as_str()).collect();
        let left = |state: &str, name: &str, url: &str| MemberStatus {
            name: name.to_string(),
            url: url.to_string(),
            state: state.to_string(),
            ..MemberStatus::default()
        };
        statuses.extend(away.iter().map(|m| left("unreachable", &m.name, &m.url)));
        statuses.extend(
            seen.lock()
                .iter()
                .filter(|(name, _)| !live_names.contains(name.as_str()))
                .filter(|(name, _)| !listed.contains(name.as_str()))
                .map(|(name, (url, _))| left("lost", name, url)),
        );
        statuses
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    type WatchStream = super::watch::WatchStream;

    /// Only a worker's port: a scheduler's view is the members' own.
    async fn watch(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        match self.role.as_ref() {
            Role::Member { local, .. } => super::watch::watch(local).map(Response::new),
            Role::Router { .. } => Err(Error::Unimplemented(
                "Watch is a worker's: ask each worker's CAS port".into(),
            )
            .into()),
        }
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let members = match self.role.as_ref() {
            Role::Router {
                tls,
                channels,
                seen,
            } => self.route_status(tls, channels, seen).await,
            Role::Member {
                name,
                url,
                local,
                repairer,
            } => {
                let (bytes, blobs) = local.totals();
                vec![MemberStatus {
                    name: name.clone(),
                    url: url.clone(),
                    state: "live".into(),
                    blobs: blobs as u64,
                    bytes,
                    below_replicas: repairer.below_replicas(),
                    error: String::new(),
                    room: local.usage().map(|u| u.room()),
                }]
            }
        };
        let below_replicas = members
            .iter()
            .filter(|m| m.state == "live")
            .map(|m| m.below_replicas)
            .sum();
        let (scheduler, schedulers) = match &self.schedulers {
            Some((name, s)) => (
                name.clone(),
                s.borrow().iter().map(|m| m.name.clone()).collect(),
            ),
            None => (String::new(), Vec::new()),
        };
        let worker = match self.role.as_ref() {
            Role::Member { name, .. } => name.clone(),
            Role::Router { .. } => String::new(),
        };
        Ok(Response::new(StatusResponse {
            replicas: self.store.replicas() as u32,
            members,
            below_replicas,
            schedulers,
            scheduler,
            worker,
            keep_referenced_secs: self.keep_referenced.map(|k| k.as_secs()),
        }))
    }

    async fn locate(
        &self,
        request: Request<LocateRequest>,
    ) -> Result<Response<LocateResponse>, Status> {
        let request = request.into_inner();
        validate_instance_name(&request.instance_name)?;
        if request.digests.len() > MAX_LOCATE {
            return Err(Error::invalid(format!(
                "at most {MAX_LOCATE} digests per Locate, not {}",
                request.digests.len()
            ))
            .into());
        }
        let function = remexec_core::DigestFunction::from_proto(request.digest_function)?;
        let digests = request
            .digests
            .iter()
            .map(|d| Digest::from_proto(function, d))
            .collect::<remexec_core::Result<Vec<_>>>()?;
        let instance = request.instance_name.as_str();
        let asks = self.store.stores().into_iter().map(|(name, store)| {
            let digests = &digests;
            async move {
                let answer = store.find_missing(instance, digests).await;
                (name, answer)
            }
        });
        let mut holders: Vec<Vec<String>> = vec![Vec::new(); digests.len()];
        for (name, answer) in futures::future::join_all(asks).await {
            match answer {
                Ok(missing) => {
                    let missing: HashSet<Digest> = missing.into_iter().collect();
                    for (i, d) in digests.iter().enumerate() {
                        if !missing.contains(d) {
                            holders[i].push(name.clone());
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(member = %name, error = %e, "locate: a member did not answer")
                }
            }
        }
        let away: HashSet<String> = self.store.unreachable().into_iter().collect();
        let locations = digests
            .iter()
            .zip(holders)
            .map(|(d, holders)| {
                let placement = self.store.placement(d);
                let unreachable = placement.iter().filter(|m| away.contains(*m)).cloned();
                Location {
                    digest: Some(d.to_proto()),
                    holders,
                    unreachable: unreachable.collect(),
                    placement,
                }
            })
            .collect();
        Ok(Response::new(LocateResponse { locations }))
    }
}

#[cfg(test)]
mod tests {
    //! Locate refuses what a client may send wrong: too many digests, a bad instance name,
    //! a bad digest or digest function; and answers the holders it finds.

    use std::sync::Arc;

    use remexec_core::{BlobStore, BlobStoreExt, DigestFunction};
    use remexec_proto::cluster::v1::LocateRequest;
    use remexec_proto::cluster::v1::cluster_server::Cluster;

    use super::*;
    use crate::MemoryStore;

    fn service() -> (ClusterService, Arc<MemoryStore>) {
        let store = Arc::new(ReplicatedStore::new(1).unwrap());
        let member = Arc::new(MemoryStore::new(1 << 20));
        store.set_members([("w1".to_string(), member.clone() as Arc<dyn BlobStore>)]);
        let (_tx, members) = watch::channel(Vec::new());
        (
            ClusterService::router(store, members, ClientTls::default()),
            member,
        )
    }

    async fn locate(
        service: &ClusterService,
        req: LocateRequest,
    ) -> Result<LocateResponse, Status> {
        service
            .locate(Request::new(req))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn bad_requests_are_invalid_and_holders_are_found() {
        let (service, member) = service();
        let d = DigestFunction::Sha256.digest_of(b"blob");
        member.put_bytes("", d, "blob".into()).await.unwrap();
        let ok = locate(
            &service,
            LocateRequest {
                digests: vec![d.to_proto()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(ok.locations[0].holders, ["w1"]);
        assert_eq!(ok.locations[0].placement, ["w1"]);
        let bad = [
            LocateRequest {
                digests: vec![d.to_proto(); MAX_LOCATE + 1],
                ..Default::default()
            },
            LocateRequest {
                instance_name: "../x".into(),
                ..Default::default()
            },
            LocateRequest {
                digests: vec![remexec_core::reapi::Digest {
                    hash: "zz".into(),
                    size_bytes: 1,
                }],
                ..Default::default()
            },
            LocateRequest {
                digest_function: 999,
                ..Default::default()
            },
        ];
        for req in bad {
            let status = locate(&service, req).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    }
}

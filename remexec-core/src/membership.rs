//! [`Membership`]: the live members of a cluster, found from seed URLs and checked with
//! heartbeats.
//!
//! Each seed is a `grpc://host:port` (or `grpcs://`) URL. Its host is resolved again on every
//! round, and each address it resolves to is a member (`grpc://address:port`): a list of
//! addresses, or one DNS name that resolves to all of them, as a Kubernetes headless service
//! does, work alike. Every `interval`, each member gets a gRPC health check
//! (`grpc.health.v1.Health/Check`, the empty service, which remexec's ports answer), or
//! whatever [`Probe`] the membership is given; a member whose last answer is older than
//! `dead_after` is dead. A probe also names the member: the health probe by its URL, the
//! storage plane's probe (remexec-cas) by the name the worker reports.
//!
//! A membership publishes two lists:
//! - the **live** members ([`Membership::members`]): those that answered here within
//!   `dead_after`. Each instance has its own view; it routes by it (whom to ask, whom to
//!   write to);
//! - the **roster** ([`Membership::roster`]): every member that answered here once, for as
//!   long as the seeds still resolve to its URL (or it answers). The seeds are one list, or
//!   one DNS name, shared by every instance, so every instance that has reached a member once
//!   lists it: a member cut off from one instance only stays on that instance's roster.
//!   Placement ([`crate::placement`]) is computed over the roster, so that such a cut changes
//!   where a blob is routed, never where it belongs. A member leaves every roster when the
//!   seeds stop naming it (a static list edited, a pod gone from a headless service's DNS).
//!
//! There is no consensus protocol of remexec's own: the shared seeds are the agreement, as in
//! the static sharding configuration of Buildbarn. An instance lists a member only after
//! reaching it once, so a member that one instance never reached since it started is missing
//! from that instance's roster alone. Larger clusters hold the roster in etcd instead (the
//! `etcd` feature): one seed `etcd://host:port/prefix`, under which each member registers with
//! a lease ([`Membership::register`], [`etcd`]); the roster is then what etcd lists, the same
//! for every instance, and a member leaves it when its lease ends.
//!
//! ```no_run
//! # async fn example() -> remexec_core::Result<()> {
//! use std::time::Duration;
//! use remexec_core::membership::{Membership, MembershipConfig};
//!
//! let config = MembershipConfig::new(vec!["grpc://workers.remexec.svc:8981".into()]);
//! let membership = Membership::start(config)?;
//! let mut changes = membership.members();
//! changes.changed().await.ok();
//! println!("live: {:?}", membership.live());
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::ClientTls;
use crate::{Error, Result};

/// One member of a cluster: the name placement hashes ([`crate::placement`]) and the URL it is
/// reached at. Every instance must give a member the same name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    /// The stable name (a worker's `--name`, or the URL itself).
    pub name: String,
    /// `grpc://host:port` or `grpcs://host:port`.
    pub url: String,
}

impl Member {
    /// A short id of member name `name` (12 hex digits of its SHA-256), safe in resource names
    /// such as operation names (`operations/{id}/…`).
    pub fn id_of(name: &str) -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(name.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A member named by its URL, as [`Membership`] finds them.
    pub fn at(url: impl Into<String>) -> Self {
        let url = url.into();
        Self {
            name: url.clone(),
            url,
        }
    }
}

/// What a [`Probe`] found at a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// A member answered, under this name.
    Member(Member),
    /// Something answered that is no member (another service, a bad name, another replica
    /// count): it leaves the live list and the roster at once.
    Refused,
    /// No answer within the timeout: a member that stays silent for `dead_after` is dead, and
    /// stays on the roster.
    Silent,
}

/// How a membership checks a member and learns its name: each round, every address the seeds
/// resolve to is probed; an answer within `timeout` makes it live under the [`Member`]
/// returned.
#[async_trait::async_trait]
pub trait Probe: std::fmt::Debug + Send + Sync + 'static {
    /// What answers at `url`, asked over `channel` within `timeout`.
    async fn probe(&self, url: &str, channel: Channel, timeout: Duration) -> Probed;
}

/// The gRPC health check (`grpc.health.v1.Health/Check`, the empty service): a member that
/// answers `SERVING` is named by its URL ([`Member::at`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthProbe;

#[async_trait::async_trait]
impl Probe for HealthProbe {
    async fn probe(&self, url: &str, channel: Channel, timeout: Duration) -> Probed {
        match serving(channel, timeout).await {
            true => Probed::Member(Member::at(url)),
            false => Probed::Silent,
        }
    }
}

/// How members are found and checked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MembershipConfig {
    /// Seed URLs, each resolving to one or more members.
    pub seeds: Vec<String>,
    /// How often members are resolved and checked (default 1 s).
    pub interval: Duration,
    /// How long a member may go without a `SERVING` answer before it counts as dead (default
    /// 5 s): the time to detect a lost instance.
    pub dead_after: Duration,
    /// TLS for `grpcs://` seeds.
    pub tls: ClientTls,
    /// How a member is checked and named (default [`HealthProbe`]).
    pub probe: std::sync::Arc<dyn Probe>,
    /// Whether one `etcd://host:port/prefix` seed may name a roster held in etcd (the storage
    /// plane's; default `false`: the seeds are the members' URLs).
    pub etcd: bool,
}

impl MembershipConfig {
    /// `seeds` with the default interval (1 s) and detection time (5 s), plaintext.
    pub fn new(seeds: Vec<String>) -> Self {
        Self {
            seeds,
            interval: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            tls: ClientTls::default(),
            probe: std::sync::Arc::new(HealthProbe),
            etcd: false,
        }
    }
}

/// A running membership: a background task that resolves and checks the members, for as
/// long as the membership or a receiver of its [`members`](Membership::members) is kept.
#[derive(Debug)]
pub struct Membership {
    live: watch::Receiver<Vec<Member>>,
    roster: watch::Receiver<Vec<Member>>,
    /// The etcd roster its seed names, if it has one.
    etcd: Option<etcd::EtcdRoster>,
    /// The registration in it, if [`register`](Membership::register) started one.
    registration: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A seed's scheme and port, and its host.
fn split_seed(seed: &str) -> Result<(&str, &str, u16)> {
    let (scheme, rest) = seed
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "grpc" | "grpcs" | "http" | "https"))
        .ok_or_else(|| {
            Error::invalid(format!(
                "seed {seed:?}: expected grpc://host:port or grpcs://host:port"
            ))
        })?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| Error::invalid(format!("seed {seed:?}: needs host:port")))?;
    Ok((
        scheme,
        host.trim_start_matches('[').trim_end_matches(']'),
        port,
    ))
}

/// The member URLs `seeds` resolve to now, each lookup bounded by `timeout`; a seed that
/// does not resolve contributes none.
async fn resolve(seeds: &[String], timeout: Duration) -> BTreeSet<String> {
    let mut members = BTreeSet::new();
    for seed in seeds {
        members.extend(resolve_seed(seed, timeout).await.into_iter().flatten());
    }
    members
}

/// The member URLs `seed` resolves to now, or `None` if its lookup fails or takes longer than
/// `timeout`.
async fn resolve_seed(seed: &str, timeout: Duration) -> Option<BTreeSet<String>> {
    let (scheme, host, port) = split_seed(seed).ok()?;
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addresses)) => Some(addresses.map(|a| format!("{scheme}://{a}")).collect()),
        Ok(Err(e)) => {
            tracing::debug!(%seed, error = %e, "a seed does not resolve");
            None
        }
        Err(_) => {
            tracing::debug!(%seed, "a seed's lookup timed out");
            None
        }
    }
}

/// Follows a membership: calls `apply` with the members `live` publishes and a channel to
/// each of them that `reach` accepts (opened lazily with `tls`, by URL, and kept while its
/// member stays), at once and after every change, until `live`'s sender is gone. The one loop
/// behind everything that tracks members: the replicated CAS, the sharded Action Cache and a
/// worker's scheduler sessions. A member whose URL cannot become a channel has none, with a
/// warning.
pub fn follow(
    mut live: watch::Receiver<Vec<Member>>,
    tls: crate::client::ClientTls,
    reach: impl Fn(&Member) -> bool + Send + 'static,
    mut apply: impl FnMut(&[Member], &HashMap<String, Channel>) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut channels = crate::client::Channels::default();
        loop {
            let members = live.borrow_and_update().clone();
            let open = channels.update(members.iter().filter(|m| reach(m)).map(|m| &m.url), &tls);
            apply(&members, open);
            if live.changed().await.is_err() {
                return;
            }
        }
    })
}

/// The URL an instance's port is reached at, as its peers list it: `advertise` if set, else
/// `grpc://` and the bound address, with `host` in place of an unspecified address (0.0.0.0
/// or ::), as in a container network where names resolve. The one rule for schedulers (whose
/// `host` is the machine's name) and workers' CAS ports (whose `host` is the worker's name).
///
/// ```
/// use remexec_core::membership::advertised_url;
/// let any = "0.0.0.0:8980".parse().unwrap();
/// assert_eq!(advertised_url(None, any, "w1"), "grpc://w1:8980");
/// assert_eq!(advertised_url(None, "127.0.0.1:8980".parse().unwrap(), "w1"), "grpc://127.0.0.1:8980");
/// assert_eq!(advertised_url(Some("grpcs://cas.example:443"), any, "w1"), "grpcs://cas.example:443");
/// ```
pub fn advertised_url(advertise: Option<&str>, bound: std::net::SocketAddr, host: &str) -> String {
    match advertise {
        Some(url) => url.to_string(),
        None if bound.ip().is_unspecified() => format!("grpc://{host}:{}", bound.port()),
        None => format!("grpc://{bound}"),
    }
}

/// `url` as a [`Membership`] names the member it resolves to (`scheme://address:port`, the
/// first address), so that an instance can name itself as its peers name it. `url` itself if
/// it does not resolve within `timeout`; `InvalidArgument` if it is not a seed URL.
pub async fn canonical_url(url: &str, timeout: Duration) -> Result<String> {
    split_seed(url)?;
    let resolved = resolve(&[url.to_string()], timeout).await;
    Ok(resolved
        .into_iter()
        .next()
        .unwrap_or_else(|| url.to_string()))
}

/// Whether the member behind `channel` answers `SERVING` within `timeout`.
async fn serving(channel: Channel, timeout: Duration) -> bool {
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(timeout, check).await,
        Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32
    )
}

impl Membership {
    /// Starts resolving and checking `config`'s seeds on the current tokio runtime.
    /// `InvalidArgument` for a seed that is not a `grpc://host:port` URL or a zero interval.
    pub fn start(config: MembershipConfig) -> Result<Self> {
        let etcd = etcd_seed(&config.seeds, config.etcd)?;
        if etcd.is_none() {
            for seed in &config.seeds {
                split_seed(seed)?;
            }
        }
        if config.interval.is_zero() || config.dead_after.is_zero() {
            return Err(Error::invalid(
                "membership interval and dead_after must be positive",
            ));
        }
        let (tx, live) = watch::channel(Vec::new());
        let (roster_tx, roster) = watch::channel(Vec::new());
        tokio::spawn(run(config, etcd.clone(), tx, roster_tx));
        Ok(Self {
            live,
            roster,
            etcd,
            registration: parking_lot::Mutex::default(),
        })
    }

    /// The live members' URLs, sorted.
    pub fn live(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.live.borrow().iter().map(|m| m.url.clone()).collect();
        urls.sort();
        urls
    }

    /// The live members, sorted by name, as their probes name them; the receiver sees every
    /// change for as long as the membership runs.
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.live.clone()
    }

    /// The roster: every member that answered once and that the seeds still name (or that is
    /// live), or with an etcd seed every member etcd lists, sorted by name, the live ones among
    /// them and none that answered as no member; see the module docs. The receiver sees every
    /// change for as long as the membership runs.
    pub fn roster(&self) -> watch::Receiver<Vec<Member>> {
        self.roster.clone()
    }

    /// Registers `member` in the roster's etcd, renewing its lease until `stop` resolves, then
    /// revoking it; nothing for a membership of seeds, whose roster is what they resolve to.
    pub fn register(
        &self,
        member: Member,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        if let Some(etcd) = self.etcd.clone() {
            let task = tokio::spawn(etcd.keep_registered(member, etcd::LEASE_TTL, stop));
            *self.registration.lock() = Some(task);
        }
    }

    /// Waits (at most 3 s) until the registration [`register`](Self::register) started has
    /// ended, its lease revoked: what a stopping process awaits before it exits, so that it
    /// leaves the roster at once.
    pub async fn deregistered(&self) {
        let task = self.registration.lock().take();
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

/// The etcd roster `seeds` name: one `etcd://` seed alone, or none. `InvalidArgument` for an
/// etcd seed beside others, where none is `allowed`, or one this build cannot follow.
fn etcd_seed(seeds: &[String], allowed: bool) -> Result<Option<etcd::EtcdRoster>> {
    let etcd: Vec<&String> = seeds.iter().filter(|s| s.starts_with("etcd://")).collect();
    match etcd.as_slice() {
        [] => Ok(None),
        [_] if !allowed => Err(Error::invalid(
            "an etcd:// seed names the storage roster (--storage), not schedulers or peers",
        )),
        [seed] if seeds.len() == 1 => etcd::EtcdRoster::from_seed(seed),
        _ => Err(Error::invalid(
            "an etcd:// seed must be the only seed: the roster is then what etcd lists",
        )),
    }
}

/// What the membership task knows between rounds.
#[derive(Default)]
struct Known<'a> {
    /// Each URL's last member answer, and when.
    last_ok: HashMap<String, (Member, Instant)>,
    /// The roster's members by URL: every URL that answered (seeds), or what etcd lists.
    named: HashMap<String, Member>,
    /// URLs whose last answer was a refusal: off the roster until they answer as members.
    refused: std::collections::HashSet<String>,
    /// What each seed last resolved to: a failed lookup keeps it.
    resolved: HashMap<&'a str, BTreeSet<String>>,
}

impl<'a> Known<'a> {
    /// The URLs to probe this round: what etcd lists (a failed read keeps the last list), or
    /// what the seeds resolve to and the members they stopped resolving to that answered
    /// within `dead_after` (a DNS blip).
    async fn urls(
        &mut self,
        config: &'a MembershipConfig,
        etcd: Option<&etcd::EtcdRoster>,
    ) -> BTreeSet<String> {
        let now = Instant::now();
        let recent = |t: &Instant| now.saturating_duration_since(*t) < config.dead_after;
        self.last_ok.retain(|_, (_, t)| recent(t));
        if let Some(etcd) = etcd {
            match tokio::time::timeout(config.interval, etcd.members()).await {
                Ok(Ok(listed)) => {
                    self.named = listed.into_iter().map(|m| (m.url.clone(), m)).collect();
                    // A member etcd no longer lists is no member.
                    let named = &self.named;
                    self.last_ok.retain(|url, _| named.contains_key(url));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "reading the roster from etcd failed"),
                Err(_) => tracing::warn!("reading the roster from etcd timed out"),
            }
            return self.named.keys().cloned().collect();
        }
        for seed in &config.seeds {
            if let Some(urls) = resolve_seed(seed, config.interval).await {
                self.resolved.insert(seed, urls);
            }
        }
        let mut urls: BTreeSet<String> = self.resolved.values().flatten().cloned().collect();
        // Members the seeds no longer name leave the roster once they stop answering.
        let last_ok = &self.last_ok;
        self.named
            .retain(|url, _| urls.contains(url) || last_ok.contains_key(url));
        urls.extend(self.last_ok.keys().cloned());
        urls
    }

    /// Notes what a probe of `url` found at `now`; with `etcd`, the roster is etcd's list.
    fn note(&mut self, url: String, probed: Probed, now: Instant, etcd: bool) {
        match probed {
            Probed::Member(member) => {
                self.refused.remove(&url);
                if !etcd {
                    self.named.insert(url.clone(), member.clone());
                }
                self.last_ok.insert(url, (member, now));
            }
            Probed::Refused => {
                self.named.remove(&url);
                self.last_ok.remove(&url);
                self.refused.insert(url);
            }
            Probed::Silent => {}
        }
    }

    /// The roster's members by URL, refused ones left out.
    fn roster(&self) -> HashMap<String, Member> {
        let answering = self
            .named
            .iter()
            .filter(|(url, _)| !self.refused.contains(*url));
        answering.map(|(u, m)| (u.clone(), m.clone())).collect()
    }
}

/// The membership task: every interval, resolve, check, publish what changed.
async fn run(
    config: MembershipConfig,
    etcd: Option<etcd::EtcdRoster>,
    tx: watch::Sender<Vec<Member>>,
    roster_tx: watch::Sender<Vec<Member>>,
) {
    let mut channels = crate::client::Channels::default();
    let mut known = Known::default();
    loop {
        let urls = known.urls(&config, etcd.as_ref()).await;
        let checks = channels
            .update(&urls, &config.tls)
            .iter()
            .map(|(url, channel)| {
                let probe = config.probe.probe(url, channel.clone(), config.interval);
                async move { (url.clone(), probe.await) }
            });
        let now = Instant::now();
        for (url, probed) in futures::future::join_all(checks).await {
            known.note(url, probed, now, etcd.is_some());
        }
        let live = live_members(&known.last_ok, now, config.dead_after);
        publish_roster(&roster_tx, &known.roster(), &live);
        tx.send_if_modified(|current| {
            if *current == live {
                return false;
            }
            tracing::info!(?live, "cluster members changed");
            *current = live;
            true
        });
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = tx.closed() => return,
        }
    }
}

/// Publishes the roster if it changed: the members `named` lists, with the URL each is live
/// at if it is, sorted by name, one per name.
fn publish_roster(
    tx: &watch::Sender<Vec<Member>>,
    named: &HashMap<String, Member>,
    live: &[Member],
) {
    let mut roster: Vec<Member> = live.to_vec();
    let listed: std::collections::HashSet<&str> = live.iter().map(|m| m.name.as_str()).collect();
    let mut away: Vec<&Member> = named
        .values()
        .filter(|m| !listed.contains(m.name.as_str()))
        .collect();
    away.sort();
    roster.extend(away.into_iter().cloned());
    roster.sort_by(|a, b| a.name.cmp(&b.name));
    roster.dedup_by(|later, first| later.name == first.name);
    tx.send_if_modified(|current| {
        if *current == roster {
            return false;
        }
        tracing::info!(roster = ?roster.iter().map(|m| &m.name).collect::<Vec<_>>(), "cluster roster changed");
        *current = roster;
        true
    });
}

/// The members answered within `dead_after` of `now`, sorted by name; of two URLs answering
/// under one name (one member reached two ways), the first URL.
fn live_members(
    last_ok: &HashMap<String, (Member, Instant)>,
    now: Instant,
    dead_after: Duration,
) -> Vec<Member> {
    let mut live: Vec<Member> = last_ok
        .values()
        .filter(|(_, t)| now.saturating_duration_since(*t) < dead_after)
        .map(|(m, _)| m.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    live.dedup_by(|later, first| later.name == first.name);
    live
}

/// A node among its peers (schedulers sharing the Action Cache): the health-checked
/// membership its seeds resolve to, and its own name among them.
#[derive(Debug)]
pub struct Peers {
    /// This node's name: its advertised URL, as the peers' seeds resolve it.
    pub name: String,
    membership: Membership,
}

impl Peers {
    /// The peers `seeds` resolve to, reached with `tls`, for a node bound at `bound` and
    /// reached at `advertise` (see [`advertised_url`]). Logs an error if, 10 s on, the node is
    /// not among the members its seeds resolve to: the cluster's views of who owns what would
    /// then differ.
    pub async fn start(
        seeds: Vec<String>,
        advertise: Option<&str>,
        bound: std::net::SocketAddr,
        tls: ClientTls,
    ) -> Result<Self> {
        let mut settings = MembershipConfig::new(seeds);
        settings.tls = tls;
        // Named as the peers name it: the membership resolves every seed to addresses.
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        let advertised = advertised_url(advertise, bound, &host);
        let name = canonical_url(&advertised, Duration::from_secs(5)).await?;
        tracing::info!(%name, "this node's name among its peers");
        let membership = Membership::start(settings)?;
        let (mut live, own) = (membership.members(), name.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let listed = live.borrow_and_update().iter().any(|m| m.name == own);
            if !listed {
                let names: Vec<String> = live.borrow().iter().map(|m| m.name.clone()).collect();
                tracing::error!(name = %own, live = ?names,
                    "this scheduler is not among the peers its --peer list resolves to: set --advertise to the URL they resolve it to");
            }
        });
        Ok(Self { name, membership })
    }

    /// The live peers, this node included.
    pub fn members(&self) -> watch::Receiver<Vec<Member>> {
        self.membership.members()
    }
}

#[cfg(feature = "etcd")]
pub mod etcd;

/// Without the `etcd` feature, an `etcd://` seed is refused.
#[cfg(not(feature = "etcd"))]
mod etcd {
    use super::Member;
    use crate::{Error, Result};

    /// How long a registration lasts (unused without etcd).
    pub(super) const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

    /// No etcd roster can exist in this build.
    #[derive(Clone, Debug)]
    pub(super) enum EtcdRoster {}

    impl EtcdRoster {
        pub(super) fn from_seed(seed: &str) -> Result<Option<Self>> {
            Err(Error::invalid(format!(
                "seed {seed:?}: this build has no etcd support (the `etcd` feature)"
            )))
        }
        pub(super) async fn members(&self) -> Result<Vec<Member>> {
            match *self {}
        }
        pub(super) async fn keep_registered(
            self,
            _: Member,
            _: std::time::Duration,
            _: impl std::future::Future<Output = ()>,
        ) {
            match self {}
        }
    }
}

#[cfg(test)]
mod tests;

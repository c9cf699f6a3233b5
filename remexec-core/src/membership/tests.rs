//! Membership against real health servers on loopback: members found, a killed one gone
//! within dead_after, a DNS name expanded, bad seeds refused.

use std::time::Duration;

use super::*;

/// A member on 127.0.0.1 serving only the health service, on a runtime of its own; sending on
/// (or dropping) the returned sender kills it: the runtime goes, with every connection.
async fn member() -> (String, u16, std::sync::mpsc::Sender<()>) {
    member_at(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
}

/// [`member`] on `listener`.
fn member_at(listener: std::net::TcpListener) -> (String, u16, std::sync::mpsc::Sender<()>) {
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let incoming = futures::stream::unfold(listener, |l| async move {
                Some((l.accept().await.map(|(s, _)| s), l))
            });
            let (_reporter, service) = tonic_health::server::health_reporter();
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        runtime.block_on(async {
            while killed.try_recv() == Err(std::sync::mpsc::TryRecvError::Empty) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        // Dropping the runtime drops the server and its connections.
    });
    (format!("grpc://127.0.0.1:{port}"), port, kill)
}

fn fast(seeds: Vec<String>) -> MembershipConfig {
    let mut config = MembershipConfig::new(seeds);
    config.interval = Duration::from_millis(50);
    config.dead_after = Duration::from_millis(300);
    config
}

async fn until(membership: &Membership, secs: u64, want: impl Fn(&[String]) -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if want(&membership.live()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn members_are_found_and_a_dead_one_leaves_within_dead_after() {
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(member().await);
    }
    let urls: Vec<String> = members.iter().map(|(u, _, _)| u.clone()).collect();
    // A seed nobody listens on is never live.
    let silent = format!("grpc://127.0.0.1:{}", {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    });
    let seeds = urls.iter().cloned().chain([silent]).collect();
    let membership = Membership::start(fast(seeds)).unwrap();
    let mut sorted = urls.clone();
    sorted.sort();
    assert!(
        until(&membership, 10, |live| live == sorted).await,
        "{:?}",
        membership.live()
    );
    let (dead, _, kill) = members.remove(1);
    kill.send(()).unwrap();
    let killed = Instant::now();
    assert!(
        until(&membership, 10, |live| live.len() == 2
            && !live.contains(&dead))
        .await,
        "{:?}",
        membership.live()
    );
    // Detected within dead_after plus a round or two.
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
}

/// A member that stops answering leaves the live list and stays on the roster while the seeds
/// name it; it is live again when it answers again. A seed that never answered is on neither.
#[tokio::test]
async fn a_member_that_stops_answering_stays_on_the_roster() {
    let (a, _, _keep_a) = member().await;
    let (b, port_b, kill_b) = member().await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = format!("grpc://{}", silent.local_addr().unwrap());
    let membership = Membership::start(fast(vec![a.clone(), b.clone(), silent])).unwrap();
    let roster = membership.roster();
    let urls = |list: &[Member]| list.iter().map(|m| m.url.clone()).collect::<Vec<_>>();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert!(until(&membership, 10, |live| live == both).await);
    assert_eq!(urls(&roster.borrow()), both);
    kill_b.send(()).unwrap();
    assert!(until(&membership, 10, |live| live == [a.clone()]).await);
    assert_eq!(
        urls(&roster.borrow()),
        both,
        "the roster keeps the member cut off"
    );
    // Answering again on the same port, it is live again.
    let mut again = None;
    for _ in 0..100 {
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port_b)) {
            again = Some(member_at(listener));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "port {port_b} stayed taken");
    assert!(until(&membership, 10, |live| live == both).await);
    assert_eq!(urls(&roster.borrow()), both);
}

#[tokio::test]
async fn a_dns_name_stands_for_every_address_it_resolves_to() {
    let (_, port, _task) = member().await;
    // `localhost` resolves to 127.0.0.1 (and maybe ::1, where nothing listens).
    let membership = Membership::start(fast(vec![format!("grpc://localhost:{port}")])).unwrap();
    let want = format!("grpc://127.0.0.1:{port}");
    assert!(
        until(&membership, 10, |live| live == [want.clone()]).await,
        "{:?}",
        membership.live()
    );
}

#[test]
fn bad_seeds_are_refused() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    for seed in ["127.0.0.1:80", "ftp://h:1", "grpc://h", "grpc://h:port"] {
        assert!(
            Membership::start(MembershipConfig::new(vec![seed.into()])).is_err(),
            "{seed}"
        );
    }
    assert_eq!(split_seed("grpc://[::1]:5/").unwrap(), ("grpc", "::1", 5));
}

/// `follow` applies the members at once and after each change, with channels only to those
/// `reach` accepts (kept by URL across changes), and ends when the sender is gone.
#[tokio::test]
async fn follow_applies_every_change_with_channels_to_reachable_members() {
    let member = |name: &str, port: u16| Member {
        name: name.into(),
        url: format!("grpc://127.0.0.1:{port}"),
    };
    let (tx, rx) = watch::channel(vec![member("a", 1), member("self", 2)]);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let task = follow(
        rx,
        crate::client::ClientTls::default(),
        |m| m.name != "self",
        move |members, channels| {
            let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
            let mut urls: Vec<String> = channels.keys().cloned().collect();
            urls.sort();
            seen_tx.send((names, urls)).unwrap();
        },
    );
    let first = seen.recv().await.unwrap();
    assert_eq!(first.0, ["a", "self"]);
    assert_eq!(first.1, ["grpc://127.0.0.1:1"]);
    tx.send(vec![member("self", 2), member("b", 3)]).unwrap();
    let second = seen.recv().await.unwrap();
    assert_eq!(second.0, ["self", "b"]);
    assert_eq!(second.1, ["grpc://127.0.0.1:3"]);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends with its sender")
        .unwrap();
}

/// The etcd of `$ETCD` (or `etcd` on the PATH), started; `None` (the test skips) only with
/// `REMEXEC_SKIP_E2E=1`.
#[cfg(all(feature = "etcd", feature = "testing"))]
async fn etcd() -> Option<crate::testing::etcd::EtcdServer> {
    if std::env::var_os("REMEXEC_SKIP_E2E").is_some_and(|v| v == "1") {
        return None;
    }
    let binary = std::env::var("ETCD").unwrap_or_else(|_| "etcd".into());
    Some(crate::testing::etcd::EtcdServer::start(binary.as_ref()).await)
}

/// With an etcd seed, the roster is what etcd lists, the same for every instance: members
/// registered with a lease are on it; one that stops answering leaves the live list only; one
/// whose lease ends (its registration gone without a word) leaves the roster of every
/// instance; one that stops cleanly leaves at once.
#[cfg(all(feature = "etcd", feature = "testing"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_roster_is_what_etcd_lists_and_a_member_leaves_it_when_its_lease_ends() {
    let Some(etcd) = etcd().await else {
        return;
    };
    let seed = etcd.seed("remexec/test");
    let (a, _, _keep_a) = member().await;
    let (b, _, kill_b) = member().await;
    let in_etcd = || {
        let mut config = fast(vec![seed.clone()]);
        config.etcd = true;
        Membership::start(config).unwrap()
    };
    let (one, two) = (in_etcd(), in_etcd());
    let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
    one.register(Member::at(&a), async move {
        let _ = stopped_a.await;
    });
    // b's registration, with a short lease, to be dropped without a word (a crash).
    let roster_b = etcd::EtcdRoster::from_seed(&seed).unwrap().unwrap();
    let registered_b = tokio::spawn(roster_b.clone().keep_registered(
        Member::at(&b),
        Duration::from_secs(4),
        std::future::pending(),
    ));
    let names = |m: &Membership| -> Vec<String> {
        m.roster().borrow().iter().map(|m| m.name.clone()).collect()
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    for m in [&one, &two] {
        assert!(until(m, 10, |live| live == both).await, "{:?}", m.live());
        assert_eq!(names(m), both);
    }
    // The lease is renewed, not replaced (renewals come every second).
    let lease = roster_b.lease_of(&Member::at(&b)).await;
    assert!(lease.is_some());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(roster_b.lease_of(&Member::at(&b)).await, lease);
    // b stops answering: live no more, still on both rosters (its lease is renewed).
    kill_b.send(()).unwrap();
    for m in [&one, &two] {
        assert!(until(m, 10, |live| live == [a.clone()]).await);
        assert_eq!(names(m), both);
    }
    // Its registration goes without revoking: the lease ends, b leaves both rosters.
    registered_b.abort();
    let gone = |m: &Membership| names(m) == [a.clone()];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(gone(&one) && gone(&two)) {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            names(&one),
            names(&two)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a stops cleanly: its lease is revoked and it leaves at once (well within its 10 s lease).
    stop_a.send(()).unwrap();
    let stopped = Instant::now();
    while !(names(&one).is_empty() && names(&two).is_empty()) {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "{:?}",
            names(&one)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An etcd seed is the only seed, and a well-formed one.
#[test]
fn etcd_seeds_stand_alone() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _entered = runtime.enter();
    let mixed = vec!["etcd://h:1/p".to_string(), "grpc://h:2".to_string()];
    assert!(Membership::start(MembershipConfig::new(mixed)).is_err());
    let mut config = MembershipConfig::new(vec!["etcd://h/p".into()]);
    config.etcd = true;
    assert!(Membership::start(config).is_err());
    // Only the storage plane's membership may name etcd.
    assert!(Membership::start(MembershipConfig::new(vec!["etcd://h:1/p".into()])).is_err());
}

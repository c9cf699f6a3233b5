//! Membership against real health servers on loopback: members found, a killed one gone
//! within dead_after, a DNS name expanded, bad seeds refused.

use std::time::Duration;

use super::*;

/// A member on 127.0.0.1 serving only the health service, on a runtime of its own; sending on
/// (or dropping) the returned sender kills it: the runtime goes, with every connection.
async fn member() -> (String, u16, std::sync::mpsc::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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

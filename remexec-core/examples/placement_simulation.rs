//! What rendezvous placement moves when a member joins or leaves, and what placing a blob costs:
//! `remexec_core::placement` over a simulated cluster.
//!
//! ```sh
//! cargo run --release -p remexec-core --example placement_simulation -- 1000 10000000 2
//! ```
//!
//! Arguments: members (default 1000), blobs (default 1,000,000) and replicas (default 2). For
//! every blob it compares its replicas among the members with those after one member joins and
//! after one leaves, and prints the share of replicas that moved next to the ideal `1/N`, the
//! spread of load over members, and the time per placement.

use std::time::Instant;

use remexec_core::DigestFunction;
use remexec_core::placement::Placement;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are numbers"))
        .collect();
    let members = args.first().copied().unwrap_or(1000);
    let blobs = args.get(1).copied().unwrap_or(1_000_000);
    let r = args.get(2).copied().unwrap_or(2);
    let names: Vec<String> = (0..members).map(|i| format!("worker-{i}")).collect();
    let base = Placement::new(names.iter().cloned());
    let joined = Placement::new(names.iter().cloned().chain(["newcomer".to_string()]));
    let left = Placement::new(names.iter().skip(1).cloned());
    let mut load = std::collections::HashMap::<String, u64>::new();
    let (mut moved_join, mut moved_leave) = (0u64, 0u64);
    let mut placing = std::time::Duration::ZERO;
    for i in 0..blobs as u64 {
        let digest = DigestFunction::Sha256.digest_of(&i.to_le_bytes());
        let start = Instant::now();
        let before = base.replicas(&digest, r);
        placing += start.elapsed();
        moved_join += joined
            .replicas(&digest, r)
            .iter()
            .filter(|m| !before.contains(m))
            .count() as u64;
        moved_leave += left
            .replicas(&digest, r)
            .iter()
            .filter(|m| !before.contains(m))
            .count() as u64;
        for m in before {
            *load.entry(m.to_string()).or_default() += 1;
        }
    }
    let replicas = (blobs * r) as f64;
    let (min, max) = (
        load.values().min().copied().unwrap_or(0),
        load.values().max().copied().unwrap_or(0),
    );
    let mean = replicas / members as f64;
    println!("members {members}, blobs {blobs}, replicas {r}");
    println!(
        "a member joins: {:.5} of replicas move (1/(N+1) = {:.5})",
        moved_join as f64 / replicas,
        1.0 / (members + 1) as f64
    );
    println!(
        "a member leaves: {:.5} of replicas move (1/N = {:.5})",
        moved_leave as f64 / replicas,
        1.0 / members as f64
    );
    println!(
        "load per member: min {min}, max {max}, mean {mean:.0} ({:+.1}% / {:+.1}%)",
        (min as f64 / mean - 1.0) * 100.0,
        (max as f64 / mean - 1.0) * 100.0
    );
    println!(
        "placing one blob among {members}: {:.0} ns",
        placing.as_nanos() as f64 / blobs as f64
    );
}

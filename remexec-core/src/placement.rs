//! [`Placement`]: which members of a cluster hold a blob, by rendezvous (highest random weight)
//! hashing.
//!
//! Every instance computes placement from the membership it sees, with no coordination: the
//! replicas of a digest are the `R` members with the highest score for it. When a member joins
//! or leaves, only the blobs it wins or held move (about `R/N` of them), and two instances whose
//! views differ by one member still agree on most blobs.
//!
//! The score is part of the protocol between instances, so it is fixed here rather than taken
//! from a hashing crate whose output could change with its version: a member's seed is the first
//! 8 bytes (little-endian) of SHA-256 of its name, a digest's key the first 8 bytes of its hash,
//! and the score `splitmix64(seed ^ key)` (the bijective finaliser of Steele, Lea and Flood's
//! SplitMix64). Ties, which need equal seeds, go to the smaller name. Picking `R` of `N` members
//! costs `N` multiplications and no allocation beyond the result.
//!
//! ```
//! use remexec_core::{DigestFunction, placement::Placement};
//!
//! let placement = Placement::new(["w1", "w2", "w3"]);
//! let digest = DigestFunction::Sha256.digest_of(b"blob");
//! let replicas = placement.replicas(&digest, 2);
//! assert_eq!(replicas.len(), 2);
//! // Without one of its replicas, the blob keeps the other and gains the third member.
//! let smaller = Placement::new(placement.members().filter(|m| *m != replicas[0]));
//! assert_eq!(smaller.replicas(&digest, 2)[0], replicas[1]);
//! ```

use sha2::{Digest as _, Sha256};

use crate::Digest;

/// The members of a cluster, ready to place digests on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Name and seed of each member, sorted by name, without repeats.
    members: Vec<(String, u64)>,
}

/// SplitMix64's finaliser: a bijection of `u64` that spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A member's seed: the first 8 bytes of SHA-256 of its name.
fn seed(name: &str) -> u64 {
    let hash = Sha256::digest(name.as_bytes());
    u64::from_le_bytes(hash[..8].try_into().unwrap_or_default())
}

/// A digest's key: the first 8 bytes of its hash.
fn key(digest: &Digest) -> u64 {
    u64::from_le_bytes(digest.hash()[..8].try_into().unwrap_or_default())
}

impl Placement {
    /// The placement over `members` (repeats count once).
    pub fn new<S: Into<String>>(members: impl IntoIterator<Item = S>) -> Self {
        let mut members: Vec<(String, u64)> = members
            .into_iter()
            .map(|m| {
                let name = m.into();
                let seed = seed(&name);
                (name, seed)
            })
            .collect();
        members.sort();
        members.dedup_by(|a, b| a.0 == b.0);
        Self { members }
    }

    /// The members, by name.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(name, _)| name.as_str())
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The `r` members that hold `digest` (fewer if there are fewer members), best first.
    pub fn replicas(&self, digest: &Digest, r: usize) -> Vec<&str> {
        let key = key(digest);
        // (score, index) of the best r so far, best first; r is small (1 to 3).
        let mut best: Vec<(u64, usize)> = Vec::with_capacity(r + 1);
        for (i, (_, seed)) in self.members.iter().enumerate() {
            let score = mix(seed ^ key);
            // Higher score first; on a tie the smaller name (earlier index) stays ahead.
            let at = best.partition_point(|&(s, _)| s >= score);
            if at < r {
                best.insert(at, (score, i));
                best.truncate(r);
            }
        }
        best.into_iter()
            .map(|(_, i)| self.members[i].0.as_str())
            .collect()
    }

    /// [`replicas`](Self::replicas), as names of their own (to keep past a lock).
    pub fn replica_names(&self, digest: &Digest, r: usize) -> Vec<String> {
        self.replicas(digest, r)
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// Every member, in the order that `digest` prefers them: [`replicas`](Self::replicas) of
    /// all of them.
    pub fn ranked(&self, digest: &Digest) -> Vec<&str> {
        self.replicas(digest, self.members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DigestFunction;

    fn digests(n: usize) -> Vec<Digest> {
        (0..n)
            .map(|i| DigestFunction::Sha256.digest_of(&i.to_le_bytes()))
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn the_score_is_fixed() {
        // Instances of every version must agree: these values are part of the protocol.
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
        let placement = Placement::new(["a", "b", "c", "d"]);
        let digest = DigestFunction::Sha256.digest_of(b"remexec");
        assert_eq!(placement.replicas(&digest, 2), PINNED);
        // The member list's order does not matter.
        let reversed = Placement::new(["d", "c", "b", "a"]);
        assert_eq!(reversed.replicas(&digest, 2), PINNED);
    }

    /// The two replicas of `sha256("remexec")` among a, b, c and d.
    const PINNED: [&str; 2] = ["b", "c"];

    #[test]
    fn replicas_are_distinct_the_best_first_and_fewer_when_members_are() {
        let placement = Placement::new(names(5));
        for d in digests(200) {
            let ranked = placement.ranked(&d);
            assert_eq!(ranked.len(), 5);
            let mut unique = ranked.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), 5);
            for r in 0..=6 {
                assert_eq!(placement.replicas(&d, r), ranked[..r.min(5)]);
            }
        }
        assert!(Placement::default().replicas(&digests(1)[0], 2).is_empty());
        assert_eq!(Placement::new(["x", "x"]).len(), 1);
    }

    #[test]
    fn load_is_even_and_a_join_or_a_loss_moves_about_r_over_n() {
        let (n, r, blobs) = (20, 2, 20_000);
        let placement = Placement::new(names(n));
        let ds = digests(blobs);
        let mut load = std::collections::HashMap::new();
        for d in &ds {
            for m in placement.replicas(d, r) {
                *load.entry(m.to_string()).or_insert(0usize) += 1;
            }
        }
        let mean = (blobs * r / n) as f64;
        for (member, held) in &load {
            let off = (*held as f64 - mean).abs() / mean;
            assert!(off < 0.1, "{member} holds {held}, the mean is {mean}");
        }
        let mut joined = names(n);
        joined.push("newcomer".into());
        let joined = Placement::new(joined);
        let left = Placement::new(names(n).into_iter().skip(1));
        for (other, what) in [(&joined, "join"), (&left, "loss")] {
            let mut moved = 0;
            for d in &ds {
                let (before, after) = (placement.replicas(d, r), other.replicas(d, r));
                let gained: Vec<&&str> = after.iter().filter(|m| !before.contains(m)).collect();
                moved += gained.len();
                // Whatever moves involves the member that came or went: only the newcomer
                // gains replicas, and only blobs the leaver held gain one elsewhere.
                match what {
                    "join" => assert!(gained.iter().all(|m| **m == "newcomer"), "{gained:?}"),
                    _ => assert!(
                        gained.is_empty() || before.contains(&"worker-0"),
                        "{gained:?} gained a replica of a blob worker-0 did not hold"
                    ),
                }
            }
            let share = moved as f64 / (blobs * r) as f64;
            let expected = 1.0 / n as f64;
            assert!(
                (share - expected).abs() < expected * 0.25,
                "{what}: {share:.4} of replicas moved, expected about {expected:.4}"
            );
        }
    }
}

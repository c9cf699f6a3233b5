//! `Directory` validation against an independent oracle, plus encode/decode round trips.
//!
//! Properties, for any bytes that decode as a `Directory`:
//! - if validation accepts it, every name is a single component of 1 to 255 bytes, not `.`/`..`,
//!   each list is strictly sorted, no name repeats across lists, and every digest is 64
//!   lowercase hex digits with a non-negative size;
//! - if validation accepts it, encoding and decoding again gives an equal directory that
//!   validation also accepts (valid implies formatted back equal).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use remexec_core::reapi::{Digest, Directory};
use remexec_core::{DigestFunction, merkle::validate_directory};

fn digest_ok(d: &Option<Digest>) -> bool {
    d.as_ref().is_some_and(|d| {
        d.size_bytes >= 0 && d.hash.len() == 64 && d.hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn name_ok(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
}

fn sorted(names: &[&str]) -> bool {
    names.windows(2).all(|w| w[0] < w[1])
}

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = Directory::decode(data) else { return };
    if validate_directory(DigestFunction::Sha256, &dir).is_err() {
        return;
    }
    let files: Vec<&str> = dir.files.iter().map(|f| f.name.as_str()).collect();
    let dirs: Vec<&str> = dir.directories.iter().map(|d| d.name.as_str()).collect();
    let links: Vec<&str> = dir.symlinks.iter().map(|s| s.name.as_str()).collect();
    for list in [&files, &dirs, &links] {
        assert!(sorted(list), "accepted unsorted names {list:?}");
        assert!(list.iter().all(|n| name_ok(n)), "accepted a bad name in {list:?}");
    }
    let mut all: Vec<&str> = files.iter().chain(&dirs).chain(&links).copied().collect();
    all.sort_unstable();
    assert!(all.windows(2).all(|w| w[0] != w[1]), "accepted a name used twice");
    assert!(dir.files.iter().all(|f| digest_ok(&f.digest)));
    assert!(dir.directories.iter().all(|d| digest_ok(&d.digest)));
    assert!(dir.symlinks.iter().all(|s| !s.target.is_empty()));
    let again = Directory::decode(dir.encode_to_vec().as_slice()).expect("re-decodes");
    assert_eq!(again, dir);
    assert!(validate_directory(DigestFunction::Sha256, &again).is_ok());
});

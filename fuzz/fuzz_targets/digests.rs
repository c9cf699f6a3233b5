//! Digest parsing against an independent oracle: text form, wire form, function numbers.
//!
//! Properties, for any input bytes:
//! - as text `s`, `Digest::parse(f, s)` accepts exactly when `s` is `hash/size` with a hash of
//!   64 lowercase hex digits and a canonical non-negative decimal size that fits an `i64`; an
//!   accepted digest displays back as exactly `s`, keeps `f`, and round-trips through the proto;
//! - `Digest::from_hex(f, hash, size)` with any `i64` size (negative ones included) accepts
//!   exactly a valid hash with `size >= 0`;
//! - as a `Digest` proto, `Digest::from_proto` accepts exactly valid hash and size, and
//!   `to_proto` gives back the same message; an error is always `InvalidArgument`;
//! - `DigestFunction::from_proto` accepts exactly UNKNOWN, SHA256 and BLAKE3, `from_name` only
//!   the canonical names;
//! - hashing the input in two pieces equals hashing it at once, with the size counted right.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use remexec_core::reapi::{self, digest_function::Value as ProtoFunction};
use remexec_core::{Digest, DigestFunction, Error};
use remexec_fuzz::{hash_ok, size_text};

fn check_text(f: DigestFunction, s: &str) {
    let expected = match s.split_once('/') {
        Some((hash, size)) if hash_ok(hash) => size_text(size),
        _ => None,
    };
    let parsed = Digest::parse(f, s);
    assert_eq!(
        parsed.is_ok(),
        expected.is_some(),
        "parse {s:?}: {parsed:?}"
    );
    let d = match parsed {
        Ok(d) => d,
        Err(e) => {
            assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
            return;
        }
    };
    assert_eq!(d.to_string(), s, "accepted digest must display back equal");
    assert_eq!(d.function(), f);
    let (hash, size) = s.split_once('/').expect("accepted");
    assert_eq!(d.hash_hex(), hash);
    assert!(hash_ok(&d.hash_hex()));
    let hex: String = d.hash().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, hash);
    assert_eq!(Some(d.size() as i64), expected);
    let wire = d.to_proto();
    assert_eq!(
        (wire.hash.as_str(), wire.size_bytes.to_string()),
        (hash, size.to_string())
    );
    assert_eq!(Digest::from_proto(f, &wire).expect("own proto"), d);
    assert_eq!(d.is_empty_blob(), d == f.empty_digest());
}

fn check_from_hex(f: DigestFunction, s: &str) {
    let Some((hash, size)) = s.split_once('/') else {
        return;
    };
    let Ok(size) = size.parse::<i64>() else {
        return;
    };
    let got = Digest::from_hex(f, hash, size);
    assert_eq!(
        got.is_ok(),
        hash_ok(hash) && size >= 0,
        "from_hex({hash:?}, {size}): {got:?}"
    );
    if let Ok(d) = got {
        assert_eq!((d.hash_hex().as_str(), d.size()), (hash, size as u64));
    }
}

fn check_proto(f: DigestFunction, data: &[u8]) {
    let Ok(wire) = reapi::Digest::decode(data) else {
        return;
    };
    let got = Digest::from_proto(f, &wire);
    let expected = hash_ok(&wire.hash) && wire.size_bytes >= 0;
    assert_eq!(got.is_ok(), expected, "from_proto({wire:?}): {got:?}");
    match got {
        Ok(d) => {
            assert_eq!(d.to_proto(), wire, "accepted proto must re-encode equal");
            assert_eq!(Digest::parse(f, &d.to_string()).expect("own text"), d);
            let field = Digest::from_field(f, Some(&wire), "x").expect("same as from_proto");
            assert_eq!(field, d);
        }
        Err(e) => assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}"),
    }
    assert!(Digest::from_field(f, None, "the field").is_err());
}

fn check_functions(data: &[u8], s: Option<&str>) {
    let mut number = [0u8; 4];
    for (slot, b) in number.iter_mut().zip(data) {
        *slot = *b;
    }
    let number = i32::from_le_bytes(number);
    let supported = [
        ProtoFunction::Unknown,
        ProtoFunction::Sha256,
        ProtoFunction::Blake3,
    ]
    .map(|v| v as i32);
    let got = DigestFunction::from_proto(number);
    assert_eq!(
        got.is_ok(),
        supported.contains(&number),
        "from_proto({number}): {got:?}"
    );
    if let Ok(f) = got {
        let blake3 = number == ProtoFunction::Blake3 as i32;
        assert_eq!(
            f,
            if blake3 {
                DigestFunction::Blake3
            } else {
                DigestFunction::Sha256
            }
        );
        assert_eq!(
            DigestFunction::from_proto(f.to_proto()).expect("own number"),
            f
        );
    }
    if let Some(name) = s
        && let Some(f) = DigestFunction::from_name(name)
    {
        assert_eq!(f.name(), name);
        assert!(name == "sha256" || name == "blake3");
    }
}

fn check_hashing(f: DigestFunction, data: &[u8]) {
    let cut = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    let mut hasher = f.hasher();
    hasher.update(&data[..cut]);
    hasher.update(&data[cut..]);
    assert_eq!(hasher.bytes(), data.len() as u64);
    let d = hasher.finish();
    assert_eq!(d, f.digest_of(data));
    assert_eq!(d.size(), data.len() as u64);
    assert_eq!(d.function(), f);
}

fuzz_target!(|data: &[u8]| {
    let text = std::str::from_utf8(data).ok();
    check_functions(data, text);
    for f in DigestFunction::ALL {
        if let Some(s) = text {
            check_text(f, s);
            check_from_hex(f, s);
        }
        check_proto(f, data);
        check_hashing(f, data);
    }
});

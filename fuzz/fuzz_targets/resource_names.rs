//! ByteStream resource names: parse ↔ format round trips.
//!
//! Properties, for any input string `s`:
//! - if `s` parses, formatting the result and parsing again gives the same value;
//! - if `s` parses and has no explicit `sha256` segment (the one form the formatter normalises
//!   away), formatting gives back exactly `s`;
//! - every parsed instance name passes instance-name validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remexec_core::{ReadResource, WriteResource, validate_instance_name};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let explicit_sha256 = s.split('/').any(|seg| seg == "sha256");
    if let Ok(r) = ReadResource::parse(s) {
        let formatted = r.to_string();
        assert_eq!(ReadResource::parse(&formatted).expect("formatted name parses"), r);
        if !explicit_sha256 {
            assert_eq!(formatted, s, "valid read name must format back equal");
        }
        assert!(validate_instance_name(&r.instance).is_ok());
    }
    if let Ok(w) = WriteResource::parse(s) {
        let formatted = w.to_string();
        assert_eq!(WriteResource::parse(&formatted).expect("formatted name parses"), w);
        if !explicit_sha256 {
            assert_eq!(formatted, s, "valid write name must format back equal");
        }
        assert!(!w.uuid.is_empty());
        assert!(validate_instance_name(&w.instance).is_ok());
    }
});

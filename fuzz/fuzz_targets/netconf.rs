//! The CNI network configuration the runtime writes to our stdin:
//! `NetConf::decode` + `validate` (ADD, CHECK, GC, STATUS) and
//! `NetConf::decode_for_del` + `validate_for_del` (DEL), and `Version::parse`
//! on the `cniVersion` they carry. Input: the raw stdin bytes.
//!
//! Besides "no panic, no hang, no unbounded allocation", it checks that the
//! two decoders and the validators agree with each other and with
//! `NetConf::parse`, that validation is deterministic, and that every error
//! carries the spec code its documentation promises.

#![no_main]

use hostnic_proto::cni::{CniError, NetConf, Version, code};
use libfuzzer_sys::fuzz_target;

fn check_version(s: &str) {
    if let Ok(v) = Version::parse(s) {
        assert_eq!(v.as_str(), s);
    }
}

/// Validates twice (it must not depend on anything but the config) and
/// checks that `validate` implies `validate_for_del`.
fn validate(conf: &NetConf) -> Result<(), CniError> {
    let for_del = conf.validate_for_del();
    assert_eq!(
        for_del,
        conf.validate_for_del(),
        "validate_for_del is not deterministic"
    );
    if let Err(e) = &for_del {
        assert_eq!(e.code, code::INVALID_CONFIG, "{e}");
    }
    let full = conf.validate();
    assert_eq!(full, conf.validate(), "validate is not deterministic");
    match &full {
        Ok(()) => assert!(
            for_del.is_ok(),
            "validate passed but validate_for_del did not"
        ),
        Err(e) => assert!(
            matches!(e.code, code::INVALID_CONFIG | code::UNSUPPORTED_FIELD),
            "validate: unexpected code {e}"
        ),
    }
    full
}

fuzz_target!(|data: &[u8]| {
    let strict = NetConf::decode(data);
    match &strict {
        Ok(conf) => {
            check_version(&conf.cni_version);
            let valid = validate(conf);
            let parsed = NetConf::parse(data).map(|_| ());
            assert_eq!(parsed, valid, "parse disagrees with decode + validate");
        }
        Err(e) => {
            assert!(
                matches!(e.code, code::DECODE | code::INVALID_CONFIG),
                "decode: unexpected code {e}"
            );
            assert_eq!(NetConf::parse(data).err().as_ref(), Some(e));
        }
    }

    match (NetConf::decode_for_del(data), &strict) {
        (Ok((conf, warnings)), _) => {
            check_version(&conf.cni_version);
            let _ = validate(&conf);
            if strict.is_ok() {
                assert!(
                    warnings.is_empty(),
                    "a strict config decoded with warnings: {warnings:?}"
                );
            }
        }
        (Err(e), Ok(_)) => panic!("decodes strictly but not for DEL: {e}"),
        // When DEL cannot salvage the config it reports the strict error.
        (Err(e), Err(strict_err)) => assert_eq!(&e, strict_err),
    }

    if let Ok(s) = std::str::from_utf8(data) {
        check_version(s);
    }
});

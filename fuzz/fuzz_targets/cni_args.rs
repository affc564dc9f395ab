//! `CNI_ARGS` (`K=V;K=V`), `CNI_CONTAINERID` and `CNI_IFNAME` from the
//! runtime's environment. Input: the variable's value; non-UTF-8 inputs are
//! skipped (the executable refuses them before parsing).
//!
//! Checks, besides "no panic": every refusal is CNI error 4 (invalid
//! environment); parsed arguments print back as `K=V;…` and parse to the
//! same thing; an accepted container id or interface name obeys the rules
//! the validators document.

#![no_main]

use hostnic_proto::cni::{CniArgs, code, validate_container_id, validate_ifname};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    match CniArgs::parse(s) {
        Ok(args) => {
            // Values never hold ';' (the pair separator), so they print back.
            let printed: Vec<String> = [
                ("K8S_POD_NAMESPACE", &args.pod_namespace),
                ("K8S_POD_NAME", &args.pod_name),
                ("K8S_POD_UID", &args.pod_uid),
                ("K8S_POD_INFRA_CONTAINER_ID", &args.infra_container_id),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
            let printed = printed.join(";");
            assert_eq!(CniArgs::parse(&printed), Ok(args), "{printed:?}");
        }
        Err(e) => assert_eq!(e.code, code::INVALID_ENV, "{e}"),
    }

    match validate_container_id(s) {
        Ok(()) => assert!(
            s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)),
            "accepted container id {s:?}"
        ),
        Err(e) => assert_eq!(e.code, code::INVALID_ENV, "{e}"),
    }

    match validate_ifname(s) {
        Ok(()) => assert!(
            (1..=15).contains(&s.len())
                && s != "."
                && s != ".."
                && !s.contains(['/', ':'])
                && !s.contains(char::is_whitespace),
            "accepted interface name {s:?}"
        ),
        Err(e) => assert_eq!(e.code, code::INVALID_ENV, "{e}"),
    }
});

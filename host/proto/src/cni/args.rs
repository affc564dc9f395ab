//! `CNI_ARGS`, and the container ids and interface names a runtime sends.

use super::{CniError, code};

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys are an error unless `IgnoreUnknown`
/// is set, as in libcni.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
}

impl CniArgs {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let bad = |msg: String| Err(CniError::new(code::INVALID_ENV, msg));
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                return bad(format!("CNI_ARGS: {pair:?} is not KEY=VALUE"));
            };
            let slot = match k {
                "K8S_POD_NAMESPACE" => &mut args.pod_namespace,
                "K8S_POD_NAME" => &mut args.pod_name,
                "K8S_POD_UID" => &mut args.pod_uid,
                "K8S_POD_INFRA_CONTAINER_ID" => &mut args.infra_container_id,
                "IgnoreUnknown" => {
                    ignore_unknown = match v.to_ascii_lowercase().as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return bad(format!("CNI_ARGS: IgnoreUnknown={v:?} is not a boolean")),
                    };
                    continue;
                }
                _ => {
                    unknown.push(k.to_string());
                    continue;
                }
            };
            *slot = Some(v.to_string());
        }
        if !unknown.is_empty() && !ignore_unknown {
            return bad(format!(
                "CNI_ARGS: unknown key(s) {} (set IgnoreUnknown=1 to allow them)",
                unknown.join(", ")
            ));
        }
        Ok(args)
    }
}

/// Validates `CNI_CONTAINERID` as libcni does: alphanumerics plus `_.-`,
/// starting with an alphanumeric.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_CONTAINERID {id:?} has invalid characters (allowed: letters, digits, _ . -, starting with a letter or digit)"
            ),
        ))
    }
}

/// Validates `CNI_IFNAME` as the kernel will: at most 15 bytes, not `.` or
/// `..`, no `/`, `:` or white space.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is not a valid interface name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or white space")
    } else {
        None
    };
    match problem {
        Some(p) => Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME {name:?} {p}"),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_as_containerd_sends_them() {
        let a = CniArgs::parse("K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;FOO=bar").unwrap();
        assert_eq!(a.pod_namespace.as_deref(), Some("default"));
        assert_eq!(a.pod_name.as_deref(), Some("web"));
        assert_eq!(a.pod_uid.as_deref(), Some("u-1"));
        assert_eq!(a.infra_container_id.as_deref(), Some("abc"));
        assert_eq!(
            CniArgs::parse("FOO=bar").unwrap_err().code,
            code::INVALID_ENV
        );
        assert_eq!(CniArgs::parse("FOO").unwrap_err().code, code::INVALID_ENV);
        assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
    }

    #[test]
    fn names_are_validated_like_the_kernel_and_libcni() {
        assert!(validate_ifname("eth0").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert_eq!(
                validate_ifname(bad).unwrap_err().code,
                code::INVALID_ENV,
                "{bad}"
            );
        }
        assert!(validate_container_id("abc-1.2_3").is_ok());
        for bad in ["", "-abc", "a b", "a/b"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
    }
}

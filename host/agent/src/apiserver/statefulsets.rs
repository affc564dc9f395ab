//! Whether a StatefulSet still wants the identity a kept sticky NIC
//! follows: the sticky release asks before its TTL is up, so a NIC whose
//! StatefulSet was deleted or scaled below its ordinal goes at once.

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;

/// A StatefulSet identity, as the default ip guest spells it:
/// `statefulset/<namespace>/<set>/<ordinal>`, then `@<network>` if any.
#[derive(Debug, PartialEq, Eq)]
pub struct Ordinal<'a> {
    pub namespace: &'a str,
    pub set: &'a str,
    pub ordinal: i32,
}

impl<'a> Ordinal<'a> {
    pub fn parse(identity: &'a str) -> Option<Ordinal<'a>> {
        let rest = identity.strip_prefix("statefulset/")?;
        let rest = rest.split_once('@').map_or(rest, |(r, _)| r);
        let mut parts = rest.split('/');
        let (namespace, set, ordinal) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || namespace.is_empty() || set.is_empty() {
            return None;
        }
        Some(Ordinal {
            namespace,
            set,
            ordinal: ordinal.parse().ok().filter(|o| *o >= 0)?,
        })
    }
}

/// Reads StatefulSets for the sticky release.
#[derive(Clone)]
pub struct Owners {
    client: kube::Client,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owners")
    }
}

impl Owners {
    pub fn new(client: kube::Client) -> Owners {
        Owners { client }
    }

    /// `Some(false)` when the identity's StatefulSet is gone or has fewer
    /// replicas than its ordinal needs; `Some(true)` when it still wants
    /// it; `None` when the identity is no StatefulSet's or the API server
    /// did not answer (the NIC is kept: its TTL still applies).
    pub async fn wants(&self, identity: &str) -> Option<bool> {
        let o = Ordinal::parse(identity)?;
        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), o.namespace);
        match api.get_opt(o.set).await {
            Ok(None) => Some(false),
            Ok(Some(set)) => {
                let replicas = set.spec.and_then(|s| s.replicas).unwrap_or(1);
                Some(o.ordinal < replicas)
            }
            Err(e) => {
                tracing::warn!(identity, error = %e, "reading the StatefulSet of a kept sticky NIC");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ordinal;

    #[test]
    fn identities_parse_with_and_without_a_network() {
        assert_eq!(
            Ordinal::parse("statefulset/default/db/2@storage"),
            Some(Ordinal {
                namespace: "default",
                set: "db",
                ordinal: 2
            })
        );
        assert_eq!(
            Ordinal::parse("statefulset/team-a/web/0").map(|o| o.ordinal),
            Some(0)
        );
        for not in [
            "key/default/db-0@net",
            "statefulset/default/db",
            "statefulset/default/db/x",
            "statefulset/default/db/-1",
            "statefulset//db/0",
            "statefulset/a/b/0/extra",
        ] {
            assert_eq!(Ordinal::parse(not), None, "{not}");
        }
    }
}

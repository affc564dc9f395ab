//! The JSON shapes of the actions hostnic uses.
//!
//! Unknown fields are ignored (the cloud returns many more). Fields the cloud
//! is known to send as `null` or `""` when unset are read leniently: a null
//! string becomes empty, an empty address becomes `None`. The item types also
//! serialize, in the same shape, so the simulator can answer with them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

/// An asynchronous job (AttachNics, DetachNics).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub String);

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TagId(pub String);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TagId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicStatus {
    Available,
    InUse,
    /// Any status this client does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl NicStatus {
    /// The value of DescribeNics' `status` filter.
    pub fn as_str(self) -> &'static str {
        match self {
            NicStatus::Available => "available",
            NicStatus::InUse => "in-use",
            NicStatus::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// The NIC's MAC address, `52:54:…`.
    pub nic_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub nic_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub vxnet_id: String,
    /// Empty when the NIC is not attached.
    #[serde(default, deserialize_with = "nullable")]
    pub instance_id: String,
    #[serde(default, deserialize_with = "maybe")]
    pub private_ip: Option<Ipv4Addr>,
    /// 1 for the instance's primary NIC, 0 for the others.
    #[serde(default, deserialize_with = "nullable")]
    pub role: u8,
    #[serde(default, deserialize_with = "nullable")]
    pub sequence: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub status: NicStatus,
    #[serde(default, deserialize_with = "nullable")]
    pub tags: Vec<Tag>,
    #[serde(default, deserialize_with = "nullable")]
    pub create_time: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status_time: String,
}

impl Nic {
    pub fn is_primary(&self) -> bool {
        self.role == 1
    }
}

/// One NIC as CreateNics returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedNic {
    pub nic_id: String,
    #[serde(default, deserialize_with = "maybe")]
    pub private_ip: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxNet {
    pub vxnet_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub vxnet_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub vxnet_type: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub vpc_router_id: String,
    /// None for a vxnet without a router (unmanaged).
    #[serde(default)]
    pub router: Option<Router>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Router {
    #[serde(default, deserialize_with = "maybe")]
    pub ip_network: Option<Ipv4Net>,
    /// The vxnet's gateway.
    #[serde(default, deserialize_with = "maybe")]
    pub manager_ip: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "maybe")]
    pub dyn_ip_start: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "maybe")]
    pub dyn_ip_end: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub instance_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub instance_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status: String,
    /// Present with `verbose=1`: the instance's NICs.
    #[serde(default, deserialize_with = "nullable")]
    pub vxnets: Vec<InstanceNic>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceNic {
    pub vxnet_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub nic_id: String,
    #[serde(default, deserialize_with = "maybe")]
    pub private_ip: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "nullable")]
    pub role: u8,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Working,
    Successful,
    Failed,
    #[default]
    #[serde(other)]
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: JobId,
    #[serde(default, deserialize_with = "nullable")]
    pub job_action: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status: JobStatus,
    /// Space separated in the API; see [`Job::resources`].
    #[serde(default, deserialize_with = "nullable")]
    pub resource_ids: String,
    #[serde(default, deserialize_with = "nullable")]
    pub create_time: String,
    #[serde(default, deserialize_with = "nullable")]
    pub status_time: String,
}

impl Job {
    /// The ids the job works on (tolerates commas as well as spaces).
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.resource_ids
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub tag_id: TagId,
    #[serde(default, deserialize_with = "nullable")]
    pub tag_name: String,
    /// With DescribeTags `verbose=1`.
    #[serde(default, deserialize_with = "nullable")]
    pub resource_tag_pairs: Vec<ResourceTagPair>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceTagPair {
    pub tag_id: TagId,
    /// `nic` for NICs.
    pub resource_type: String,
    pub resource_id: String,
}

/// `null` reads as the type's default.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `null` and `""` read as `None`; anything else must parse.
pub(crate) fn maybe<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(serde::de::Error::custom),
    }
}

// ---- response envelopes (crate-private: the client unwraps them) ----

/// What every response has; read first to route on `ret_code`.
#[derive(Debug, Deserialize)]
pub(crate) struct Envelope {
    pub ret_code: i64,
    #[serde(default, deserialize_with = "nullable")]
    pub message: String,
}

/// A paged Describe* answer: its items and the total across all pages.
pub(crate) trait Page: DeserializeOwned {
    type Item;
    fn into_parts(self) -> (Vec<Self::Item>, u64);
}

macro_rules! page {
    ($name:ident, $set:ident, $item:ty) => {
        #[derive(Debug, Deserialize)]
        pub(crate) struct $name {
            #[serde(default, deserialize_with = "nullable")]
            $set: Vec<$item>,
            #[serde(default, deserialize_with = "nullable")]
            total_count: u64,
        }
        impl Page for $name {
            type Item = $item;
            fn into_parts(self) -> (Vec<$item>, u64) {
                (self.$set, self.total_count)
            }
        }
    };
}

pub(crate) use page;

page!(DescribeNicsResponse, nic_set, Nic);
page!(DescribeVxNetsResponse, vxnet_set, VxNet);
page!(DescribeInstancesResponse, instance_set, Instance);
page!(DescribeJobsResponse, job_set, Job);
page!(DescribeTagsResponse, tag_set, Tag);

#[derive(Debug, Deserialize)]
pub(crate) struct CreateNicsResponse {
    pub nics: Vec<CreatedNic>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JobResponse {
    pub job_id: JobId,
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateTagResponse {
    pub tag_id: TagId,
}

/// For actions whose answer carries nothing but `ret_code`.
#[derive(Debug, Deserialize)]
pub(crate) struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_nics_with_nulls_and_unknown_fields() {
        let body = r##"{"action":"DescribeNicsResponse","ret_code":0,"total_count":2,"nic_set":[
            {"nic_id":"52:54:00:00:00:01","nic_name":"hostnic","vxnet_id":"vxnet-a","instance_id":"i-1",
             "private_ip":"10.0.0.5","role":0,"sequence":3,"status":"in-use","owner":"usr-x",
             "tags":[{"tag_id":"tag-1","tag_name":"k8s","color":"#fff"}],
             "create_time":"2024-01-01T00:00:00Z","status_time":"2024-01-01T00:00:01Z","security_group":{}},
            {"nic_id":"52:54:00:00:00:02","nic_name":null,"vxnet_id":"vxnet-a","instance_id":"",
             "private_ip":"","role":null,"status":"pending","tags":null}]}"##;
        let page: DescribeNicsResponse = serde_json::from_str(body).unwrap();
        let (nics, total) = page.into_parts();
        assert_eq!(total, 2);
        assert_eq!(nics[0].private_ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(nics[0].status, NicStatus::InUse);
        assert_eq!(nics[0].tags[0].tag_id, TagId("tag-1".into()));
        assert!(!nics[0].is_primary());
        assert_eq!(nics[1].nic_name, "");
        assert_eq!(nics[1].instance_id, "");
        assert_eq!(nics[1].private_ip, None);
        assert_eq!(nics[1].status, NicStatus::Unknown);
        assert!(nics[1].tags.is_empty());
        // The item serializes back into something that parses the same.
        let again: Nic = serde_json::from_str(&serde_json::to_string(&nics[0]).unwrap()).unwrap();
        assert_eq!(again, nics[0]);
    }

    #[test]
    fn vxnets_instances_jobs_tags() {
        let v: DescribeVxNetsResponse = serde_json::from_str(
            r#"{"ret_code":0,"total_count":2,"vxnet_set":[
              {"vxnet_id":"vxnet-a","vxnet_name":"pods","vxnet_type":1,"vpc_router_id":"rtr-1",
               "router":{"ip_network":"10.0.0.0/24","manager_ip":"10.0.0.1","dyn_ip_start":"10.0.0.2","dyn_ip_end":"10.0.0.254","router_id":"rtr-1"}},
              {"vxnet_id":"vxnet-0","vxnet_type":0,"vpc_router_id":"","router":null}]}"#,
        )
        .unwrap();
        let (v, _) = v.into_parts();
        let r = v[0].router.as_ref().unwrap();
        assert_eq!(r.ip_network, Some("10.0.0.0/24".parse().unwrap()));
        assert_eq!(r.manager_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(v[1].router, None);

        let i: DescribeInstancesResponse = serde_json::from_str(
            r#"{"ret_code":0,"total_count":1,"instance_set":[{"instance_id":"i-1","status":"running",
              "vxnets":[{"vxnet_id":"vxnet-0","nic_id":"52:54:00:00:00:00","private_ip":"192.168.0.2","role":1}]}]}"#,
        )
        .unwrap();
        let (i, _) = i.into_parts();
        assert_eq!(i[0].vxnets[0].role, 1);

        let j: DescribeJobsResponse = serde_json::from_str(
            r#"{"ret_code":0,"total_count":1,"job_set":[{"job_id":"j-1","job_action":"AttachNics",
              "status":"successful","resource_ids":"52:54:00:00:00:01 52:54:00:00:00:02,i-1"}]}"#,
        )
        .unwrap();
        let (j, _) = j.into_parts();
        assert_eq!(j[0].status, JobStatus::Successful);
        assert_eq!(j[0].resources().count(), 3);

        let t: DescribeTagsResponse = serde_json::from_str(
            r#"{"ret_code":0,"total_count":1,"tag_set":[{"tag_id":"tag-1","tag_name":"hostnic",
              "resource_tag_pairs":[{"tag_id":"tag-1","resource_type":"nic","resource_id":"52:54:00:00:00:01"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            t.into_parts().0[0].resource_tag_pairs[0].resource_type,
            "nic"
        );
    }

    #[test]
    fn small_answers_and_bad_addresses() {
        let c: CreateNicsResponse = serde_json::from_str(
            r#"{"action":"CreateNicsResponse","ret_code":0,"nics":[{"nic_id":"52:54:00:00:00:09","private_ip":"10.0.0.9"}]}"#,
        )
        .unwrap();
        assert_eq!(c.nics[0].nic_id, "52:54:00:00:00:09");
        let j: JobResponse = serde_json::from_str(r#"{"ret_code":0,"job_id":"j-9"}"#).unwrap();
        assert_eq!(j.job_id.to_string(), "j-9");
        let e: Envelope =
            serde_json::from_str(r#"{"ret_code":1400,"message":"PermissionDenied, x"}"#).unwrap();
        assert_eq!(
            (e.ret_code, e.message.as_str()),
            (1400, "PermissionDenied, x")
        );
        assert!(
            serde_json::from_str::<CreatedNic>(r#"{"nic_id":"m","private_ip":"10.0.0"}"#).is_err()
        );
    }
}

//! The typed actions hostnic uses. Each builds its parameters and hands them
//! to [`Client::call`]; all policy (retries, budgets) lives there.

use std::net::Ipv4Addr;

use crate::Client;
use crate::error::Error;
use crate::params::Params;
use crate::types::{
    CreateNicsResponse, CreateTagResponse, CreatedNic, DescribeInstancesResponse,
    DescribeJobsResponse, DescribeNicsResponse, DescribeTagsResponse, DescribeVxNetsResponse,
    Empty, Instance, Job, JobId, JobResponse, Nic, NicStatus, Page, ResourceTagPair, Tag, TagId,
    VxNet,
};

/// The largest page the cloud serves (its default is 20).
pub const PAGE_LIMIT: usize = 100;
/// One AttachNics historically handled at most this many NICs; callers
/// batching attaches should chunk by it.
pub const MAX_NICS_PER_ATTACH: usize = 5;
/// CreateNics' bounds on `count`.
pub const MAX_NICS_PER_CREATE: u32 = 252;

/// DescribeNics filters; empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NicFilter {
    /// NIC ids (MACs).
    pub nics: Vec<String>,
    pub instances: Vec<String>,
    pub vxnets: Vec<String>,
    pub status: Option<NicStatus>,
    pub nic_name: Option<String>,
}

/// DescribeTags filters; empty fields do not filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagFilter {
    pub tags: Vec<TagId>,
    pub search_word: Option<String>,
}

fn ids<S: AsRef<str>>(items: &[S]) -> impl Iterator<Item = &str> {
    items.iter().map(AsRef::as_ref)
}

impl Client {
    /// Every NIC matching `filter`, all pages.
    pub async fn describe_nics(&self, filter: &NicFilter) -> Result<Vec<Nic>, Error> {
        let mut p = Params::new();
        p.list("nics", &filter.nics)
            .list("instances", &filter.instances)
            .list("vxnets", &filter.vxnets);
        if let Some(s) = filter.status {
            p.set("status", s.as_str());
        }
        if let Some(name) = &filter.nic_name {
            p.set("nic_name", name);
        }
        self.paged::<DescribeNicsResponse>("DescribeNics", p).await
    }

    /// How many NICs `vxnet` has, every VM's and unattached ones alike:
    /// one DescribeNics of one item, for its `total_count`.
    pub async fn count_nics(&self, vxnet: &str) -> Result<u64, Error> {
        let mut p = Params::new();
        p.list("vxnets", &[vxnet]).set("offset", 0).set("limit", 1);
        let (_, total) = self
            .call::<DescribeNicsResponse>("DescribeNics", &p)
            .await?
            .into_parts();
        Ok(total)
    }

    /// Creates `count` NICs in `vxnet`; with `private_ips`, exactly those
    /// (then `count` must equal their number).
    pub async fn create_nics(
        &self,
        vxnet: &str,
        nic_name: &str,
        count: u32,
        private_ips: &[Ipv4Addr],
    ) -> Result<Vec<CreatedNic>, Error> {
        const ACTION: &str = "CreateNics";
        let invalid = |problem: String| Error::Invalid {
            action: ACTION,
            problem,
        };
        if !(1..=MAX_NICS_PER_CREATE).contains(&count) {
            return Err(invalid(format!(
                "count {count} is outside 1..={MAX_NICS_PER_CREATE}"
            )));
        }
        if !private_ips.is_empty() && private_ips.len() != count as usize {
            return Err(invalid(format!(
                "count {count} differs from the {} private IPs given",
                private_ips.len()
            )));
        }
        let mut p = Params::new();
        p.set("vxnet", vxnet)
            .set("nic_name", nic_name)
            .set("count", count)
            .list("private_ips", private_ips);
        let r: CreateNicsResponse = self.call(ACTION, &p).await?;
        Ok(r.nics)
    }

    /// Starts attaching `nics` to `instance`; the NICs must be available and
    /// the instance running (else 1400). See [`MAX_NICS_PER_ATTACH`].
    pub async fn attach_nics<S: AsRef<str>>(
        &self,
        nics: &[S],
        instance: &str,
    ) -> Result<JobId, Error> {
        if nics.is_empty() {
            return Err(Error::Invalid {
                action: "AttachNics",
                problem: "no NICs given".into(),
            });
        }
        let mut p = Params::new();
        p.list("nics", ids(nics)).set("instance", instance);
        let r: JobResponse = self.call("AttachNics", &p).await?;
        Ok(r.job_id)
    }

    /// Starts detaching `nics`. NICs the cloud no longer knows (2100) count
    /// as detached; the jobs of the rest are returned (none if all were
    /// gone).
    pub async fn detach_nics<S: AsRef<str>>(&self, nics: &[S]) -> Result<Vec<JobId>, Error> {
        let answers: Vec<JobResponse> = self.gone_tolerant("DetachNics", "nics", nics).await?;
        Ok(answers.into_iter().map(|r| r.job_id).collect())
    }

    /// Deletes detached `nics`; NICs already gone (2100) count as deleted.
    pub async fn delete_nics<S: AsRef<str>>(&self, nics: &[S]) -> Result<(), Error> {
        let _: Vec<Empty> = self.gone_tolerant("DeleteNics", "nics", nics).await?;
        Ok(())
    }

    /// Sends `action` for all of `items` (the list parameter `list`). A
    /// 2100 names one missing item but may have refused the whole batch, so
    /// then it is sent again item by item — the others must not be silently
    /// skipped — taking each 2100 as "already gone". Returns the answers of
    /// the calls that took effect.
    pub(crate) async fn gone_tolerant<S: AsRef<str>, T: serde::de::DeserializeOwned>(
        &self,
        action: &str,
        list: &str,
        items: &[S],
    ) -> Result<Vec<T>, Error> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let send = |batch: Vec<&str>| {
            let mut p = Params::new();
            p.list(list, batch);
            async move { self.call::<T>(action, &p).await }
        };
        match send(ids(items).collect()).await {
            Ok(r) => return Ok(vec![r]),
            Err(e) if e.is_not_found() && items.len() > 1 => {}
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let mut done = Vec::new();
        for item in ids(items) {
            match send(vec![item]).await {
                Ok(r) => done.push(r),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// The vxnets with these ids (all the account's if `ids` is empty).
    pub async fn describe_vxnets<S: AsRef<str>>(&self, vxnets: &[S]) -> Result<Vec<VxNet>, Error> {
        let mut p = Params::new();
        p.list("vxnets", ids(vxnets));
        self.paged::<DescribeVxNetsResponse>("DescribeVxNets", p)
            .await
    }

    /// The instances with these ids, with their NICs (`verbose=1`).
    pub async fn describe_instances<S: AsRef<str>>(
        &self,
        instances: &[S],
    ) -> Result<Vec<Instance>, Error> {
        let mut p = Params::new();
        p.list("instances", ids(instances)).set("verbose", 1);
        self.paged::<DescribeInstancesResponse>("DescribeInstances", p)
            .await
    }

    pub async fn describe_jobs(&self, jobs: &[JobId]) -> Result<Vec<Job>, Error> {
        let mut p = Params::new();
        p.list("jobs", jobs);
        self.paged::<DescribeJobsResponse>("DescribeJobs", p).await
    }

    pub async fn create_tag(&self, name: &str) -> Result<TagId, Error> {
        let mut p = Params::new();
        p.set("tag_name", name);
        let r: CreateTagResponse = self.call("CreateTag", &p).await?;
        Ok(r.tag_id)
    }

    pub async fn attach_tags(&self, pairs: &[ResourceTagPair]) -> Result<(), Error> {
        if pairs.is_empty() {
            return Ok(());
        }
        let mut p = Params::new();
        p.records(
            "resource_tag_pairs",
            pairs.iter().map(|pair| {
                [
                    ("tag_id", pair.tag_id.0.as_str()),
                    ("resource_type", pair.resource_type.as_str()),
                    ("resource_id", pair.resource_id.as_str()),
                ]
            }),
        );
        let _: Empty = self.call("AttachTags", &p).await?;
        Ok(())
    }

    /// Tags with their resources (`verbose=1`).
    pub async fn describe_tags(&self, filter: &TagFilter) -> Result<Vec<Tag>, Error> {
        let mut p = Params::new();
        p.list("tags", &filter.tags).set("verbose", 1);
        if let Some(w) = &filter.search_word {
            p.set("search_word", w);
        }
        self.paged::<DescribeTagsResponse>("DescribeTags", p).await
    }

    /// Follows `offset`/`limit` until `total_count` items arrived (or a page
    /// comes back empty, if the set shrank meanwhile). Items added or removed
    /// between pages can shift the window; callers reconcile anyway.
    pub(crate) async fn paged<R: Page>(
        &self,
        action: &str,
        params: Params,
    ) -> Result<Vec<R::Item>, Error> {
        let mut all = Vec::new();
        loop {
            let mut p = params.clone();
            p.set("offset", all.len()).set("limit", PAGE_LIMIT);
            let (items, total) = self.call::<R>(action, &p).await?.into_parts();
            let got = items.len();
            all.extend(items);
            if got == 0 || all.len() as u64 >= total {
                return Ok(all);
            }
        }
    }
}

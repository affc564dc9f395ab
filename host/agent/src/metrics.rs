//! The agent's Prometheus metrics, served in the OpenMetrics text format on
//! `[metrics] address` (loopback by default; `""` turns it off).
//!
//! Counters and histograms are recorded where things happen, through the
//! one process-wide set [`metrics()`]: a CNI verb in the server, a cloud
//! request through the IaaS client's observer, a guest call with the
//! decision log, a reconcile outcome in the cloud's upkeep. Recording is
//! an atomic add; nothing waits on a scrape. What is a state rather than
//! an event (the pool per vxnet and state, the VM's NICs, the cold ADDs
//! waiting) is read from the pool when a scrape asks.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NicLabels {
    vxnet: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VxnetLabels {
    vxnet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: &'static str,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetpolLabels {
    /// add (an ADD's first write) or change (the view changed).
    trigger: &'static str,
    /// written, unchanged (the table already said so) or error.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloudLabels {
    action: String,
    ret_code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuestCallLabels {
    pub hook: &'static str,
    pub sha256: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabels {
    hook: &'static str,
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;
type Seconds = Counter<f64, AtomicU64>;

/// From 0.1 ms to ~6.5 s: a warm ADD is ~1-20 ms, a cold one seconds.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// What a reconcile pass did (`hostnic_reconcile_total{outcome}`).
#[derive(Clone, Copy, Debug)]
pub enum Reconciled {
    /// An attached NIC of ours the pool did not know, adopted.
    Adopted,
    /// A NIC the cloud says is attached but the node had lost, re-attached.
    Reattached,
    ReattachFailed,
    /// The node's default route put back on its primary interface.
    DefaultRouteRestored,
    /// Leaked NICs deleted (one per NIC).
    LeakedDeleted,
    /// A NIC detached behind our back, forgotten.
    Forgotten,
    /// A missing NIC found on the node again.
    MissingFound,
    /// A kept sticky NIC deleted: its release TTL passed, or its
    /// StatefulSet no longer has its ordinal.
    StickyReleased,
}

impl Reconciled {
    fn label(self) -> &'static str {
        match self {
            Reconciled::Adopted => "adopted",
            Reconciled::Reattached => "reattached",
            Reconciled::ReattachFailed => "reattach_failed",
            Reconciled::DefaultRouteRestored => "default_route_restored",
            Reconciled::LeakedDeleted => "leaked_deleted",
            Reconciled::Forgotten => "forgotten",
            Reconciled::MissingFound => "missing_found",
            Reconciled::StickyReleased => "sticky_released",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    nics: Family<NicLabels, Gauge>,
    vm_nics: Gauge,
    vm_nic_limit: Gauge,
    shared_addresses: Family<VxnetLabels, Gauge>,
    shared_blocks: Family<VxnetLabels, Gauge>,
    cold_adds_waiting: Gauge,
    cni: Histograms<VerbLabels>,
    cloud_requests: Family<CloudLabels, Counter>,
    cloud_latency: Histograms<ActionLabels>,
    cloud_budget_wait: Family<ActionLabels, Seconds>,
    reconcile: Family<OutcomeLabels, Counter>,
    guest_calls: Family<GuestCallLabels, Counter>,
    guest_latency: Histograms<HookLabels>,
    guest_swaps: Family<SwapLabels, Counter>,
    netpol_writes: Family<NetpolLabels, Counter>,
    netpol_sync: Histogram,
    netpol_isolated: Gauge,
    netpol_rules: Gauge,
    netpol_elements: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("hostnic");
        let m = Metrics {
            registry: Registry::default(),
            nics: Family::default(),
            vm_nics: Gauge::default(),
            vm_nic_limit: Gauge::default(),
            shared_addresses: Family::default(),
            shared_blocks: Family::default(),
            cold_adds_waiting: Gauge::default(),
            cni: Family::new_with_constructor(latency),
            cloud_requests: Family::default(),
            cloud_latency: Family::new_with_constructor(latency),
            cloud_budget_wait: Family::default(),
            reconcile: Family::default(),
            guest_calls: Family::default(),
            guest_latency: Family::new_with_constructor(latency),
            guest_swaps: Family::default(),
            netpol_writes: Family::default(),
            netpol_sync: latency(),
            netpol_isolated: Gauge::default(),
            netpol_rules: Gauge::default(),
            netpol_elements: Gauge::default(),
        };
        r.register(
            "build",
            "The agent's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let start: Gauge = Gauge::default();
        start.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        r.register_with_unit(
            "start_time",
            "When the agent started, in seconds since the Unix epoch",
            Unit::Seconds,
            start,
        );
        r.register(
            "nics",
            "The node's NICs by vxnet and state (free, reserved, held, releasing, missing, attaching, gateway)",
            m.nics.clone(),
        );
        r.register(
            "vm_nics",
            "NICs attached to this VM, its primary included (cloud pool only)",
            m.vm_nics.clone(),
        );
        r.register(
            "vm_nic_limit",
            "NICs this VM can take (cloud pool only)",
            m.vm_nic_limit.clone(),
        );
        r.register(
            "shared_addresses",
            "Pod addresses held on this node in shared-NIC mode, by vxnet",
            m.shared_addresses.clone(),
        );
        r.register(
            "shared_blocks",
            "Address blocks this node holds in shared-NIC mode, by vxnet (with Kubernetes)",
            m.shared_blocks.clone(),
        );
        r.register(
            "cold_adds_waiting",
            "ADDs waiting for a NIC to be created and attached",
            m.cold_adds_waiting.clone(),
        );
        r.register_with_unit(
            "cni_request_duration",
            "CNI requests served by the agent, by verb and result code (0: success)",
            Unit::Seconds,
            m.cni.clone(),
        );
        r.register(
            "cloud_api_requests",
            "QingCloud API requests sent, by action and ret_code (transport: no answer)",
            m.cloud_requests.clone(),
        );
        r.register_with_unit(
            "cloud_api_request_duration",
            "QingCloud API request latency, by action",
            Unit::Seconds,
            m.cloud_latency.clone(),
        );
        r.register_with_unit(
            "cloud_api_throttle_wait",
            "Time requests waited for the client's per-action budget and for the node's slots in the account's rate",
            Unit::Seconds,
            m.cloud_budget_wait.clone(),
        );
        r.register(
            "reconcile",
            "What the node check and the cloud poll changed, by outcome",
            m.reconcile.clone(),
        );
        r.register(
            "policy_calls",
            "Policy guest calls by hook, module sha256 and result (ok, refused, error, fallback)",
            m.guest_calls.clone(),
        );
        r.register_with_unit(
            "policy_call_duration",
            "Policy guest call latency (answered calls), by hook",
            Unit::Seconds,
            m.guest_latency.clone(),
        );
        r.register(
            "policy_swaps",
            "Policy module swaps by hook and result (accepted, refused)",
            m.guest_swaps.clone(),
        );
        r.register(
            "netpol_table_writes",
            "NetworkPolicy tables made for the node's pods, by trigger (add, change) and result (written, unchanged, error)",
            m.netpol_writes.clone(),
        );
        r.register_with_unit(
            "netpol_sync_duration",
            "From a change the NetworkPolicy watches delivered to every pod's table written",
            Unit::Seconds,
            m.netpol_sync.clone(),
        );
        r.register(
            "netpol_isolated_pods",
            "The node's pods some NetworkPolicy isolates",
            m.netpol_isolated.clone(),
        );
        r.register(
            "netpol_rules",
            "Rules in the NetworkPolicy tables of the node's pods",
            m.netpol_rules.clone(),
        );
        r.register(
            "netpol_set_elements",
            "Elements in the sets of the NetworkPolicy tables of the node's pods (peers' addresses and prefixes, Services' triples, the node's addresses)",
            m.netpol_elements.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// A pod's NetworkPolicy table made (and written if it changed).
    pub fn netpol_write(&self, add: bool, result: &'static str) {
        self.netpol_writes
            .get_or_create(&NetpolLabels {
                trigger: if add { "add" } else { "change" },
                result,
            })
            .inc();
    }

    /// A change made true on every pod of the node, `elapsed` after it
    /// was delivered; `isolated` of them are isolated now, and their
    /// tables hold `rules` rules and `elements` set elements.
    pub fn netpol_synced(
        &self,
        elapsed: Duration,
        isolated: usize,
        (rules, elements): (usize, usize),
    ) {
        self.netpol_sync.observe(elapsed.as_secs_f64());
        self.netpol_isolated.set(isolated as i64);
        self.netpol_rules.set(rules as i64);
        self.netpol_elements.set(elements as i64);
    }

    /// One CNI request served: `verb` is the RPC operation's name.
    pub fn cni_request(&self, verb: &'static str, code: u32, elapsed: Duration) {
        self.cni
            .get_or_create(&VerbLabels {
                verb,
                code: code.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn reconciled(&self, what: Reconciled, n: u64) {
        self.reconcile
            .get_or_create(&OutcomeLabels {
                outcome: what.label(),
            })
            .inc_by(n);
    }

    /// One guest call: `result` is ok, refused, error or fallback.
    pub fn guest_call(
        &self,
        hook: &'static str,
        sha256: &str,
        result: &'static str,
        elapsed: Option<Duration>,
    ) {
        self.guest_calls
            .get_or_create(&GuestCallLabels {
                hook,
                sha256: sha256.to_string(),
                result,
            })
            .inc();
        if let Some(e) = elapsed {
            self.guest_latency
                .get_or_create(&HookLabels { hook })
                .observe(e.as_secs_f64());
        }
    }

    /// Calls of one guest with one result, so far (for `status`).
    pub fn guest_calls(&self, hook: &'static str, sha256: &str, result: &'static str) -> u64 {
        self.guest_calls
            .get_or_create(&GuestCallLabels {
                hook,
                sha256: sha256.to_string(),
                result,
            })
            .get()
    }

    pub fn guest_swap(&self, hook: &'static str, accepted: bool) {
        let result = if accepted { "accepted" } else { "refused" };
        self.guest_swaps
            .get_or_create(&SwapLabels { hook, result })
            .inc();
    }

    /// The scrape: the states read now — NICs per (vxnet, state), the VM's
    /// NICs and limit, the cold ADDs waiting, shared addresses and blocks
    /// per vxnet — then everything encoded.
    pub fn encode(
        &self,
        nics: BTreeMap<(String, &'static str), usize>,
        vm: Option<(usize, usize)>,
        cold_adds_waiting: usize,
        shared: BTreeMap<String, (usize, usize)>,
    ) -> String {
        self.shared_addresses.clear();
        self.shared_blocks.clear();
        for (vxnet, (held, blocks)) in shared {
            let l = VxnetLabels { vxnet };
            self.shared_addresses.get_or_create(&l).set(held as i64);
            self.shared_blocks.get_or_create(&l).set(blocks as i64);
        }
        self.nics.clear();
        for ((vxnet, state), n) in nics {
            self.nics
                .get_or_create(&NicLabels { vxnet, state })
                .set(n as i64);
        }
        let (have, limit) = vm.unwrap_or_default();
        self.vm_nics.set(have as i64);
        self.vm_nic_limit.set(limit as i64);
        self.cold_adds_waiting.set(cold_adds_waiting as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The IaaS client's observer: cloud requests into the metrics.
#[derive(Debug)]
pub struct CloudObserver;

impl CloudObserver {
    pub fn shared() -> Arc<dyn hostnic_iaas::Observer> {
        Arc::new(CloudObserver)
    }
}

impl hostnic_iaas::Observer for CloudObserver {
    fn request(&self, action: &str, ret_code: Option<i64>, elapsed: Duration) {
        let m = metrics();
        m.cloud_requests
            .get_or_create(&CloudLabels {
                action: action.to_string(),
                ret_code: ret_code.map_or_else(|| "transport".into(), |c| c.to_string()),
            })
            .inc();
        m.cloud_latency
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn budget_wait(&self, action: &str, waited: Duration) {
        metrics()
            .cloud_budget_wait
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .inc_by(waited.as_secs_f64());
    }
}

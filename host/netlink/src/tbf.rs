//! The token bucket filter's parameters: computed from a CNI limit the way
//! the reference `bandwidth` plugin computes them, and encoded as the
//! kernel's `TCA_OPTIONS` for `tbf`.
//!
//! netlink-packet-route knows the `ingress` qdisc, `u32` and `mirred`, but
//! not `tbf`; its options are built here and nowhere else. The layout is
//! `struct tc_tbf_qopt` and the `TCA_TBF_*` attributes of
//! <linux/pkt_sched.h>; what the kernel does with them is `tbf_change()`
//! and `tbf_dump()` in net/sched/sch_tbf.c.

use netlink_packet_route::tc::TcOption;
use rtnetlink::packet_core::{DefaultNla, Nla, NlasIterator};

/// One direction's limit, in CNI's units (`runtimeConfig.bandwidth`):
/// what a tbf is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Bits per second.
    pub rate: u64,
    /// Bits.
    pub burst: u64,
}

// <linux/pkt_sched.h>: enum { TCA_TBF_UNSPEC, TCA_TBF_PARMS, TCA_TBF_RTAB,
// TCA_TBF_PTAB, TCA_TBF_RATE64, … }.
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
/// `sizeof(struct tc_tbf_qopt)`: two 12-byte `struct tc_ratespec` (rate,
/// peakrate), then `__u32 limit, buffer, mtu`.
const QOPT_LEN: usize = 36;
const LIMIT_AT: usize = 24;
const BUFFER_AT: usize = 28;
/// `struct tc_ratespec`: `cell_log` (u8), `linklayer` (u8), `overhead`
/// (u16), `cell_align` (i16), `mpu` (u16), then `rate` (u32, bytes/s).
const RATESPEC_LINKLAYER_AT: usize = 1;
const RATESPEC_RATE_AT: usize = 8;
/// `TC_LINKLAYER_ETHERNET`. With a link layer given, `tbf_change()`
/// computes packet times from the rate alone and wants no rate table
/// (`TCA_TBF_RTAB`, the 256-slot table `tc` still sends for old kernels).
const LINKLAYER_ETHERNET: u8 = 1;

/// The kernel's clock for packet schedulers: one psched tick is 64 ns
/// (`PSCHED_SHIFT` 6), what /proc/net/psched announces to `tc`.
const NS_PER_TICK: u64 = 64;
/// `tbf_change()` keeps the bucket as at most `u32::MAX` ns (~4.29 s of
/// traffic at the rate): `min_t(u64, PSCHED_TICKS2NS(qopt->buffer), ~0U)`.
/// A larger buffer is clamped to this many ticks, which the kernel dumps
/// back unchanged, so what we read equals what we asked for.
const MAX_BUFFER_TICKS: u64 = u32::MAX as u64 / NS_PER_TICK;
/// The queue behind the bucket holds this much traffic at the rate, plus
/// the burst: the reference plugin's `latencyInMillis`.
const LATENCY_MS: u64 = 25;
/// `psched_mtu()` adds the link's hard header to its MTU; every pod
/// interface (a cloud NIC, a veth) is Ethernet.
const ETH_HLEN: u64 = 14;

/// A `tbf` qdisc's parameters, in the kernel's units (`struct
/// tc_tbf_qopt`). The kernel dumps exactly these back, so a read-back
/// `Tbf` equals the one that was installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tbf {
    /// Bytes per second.
    pub rate: u64,
    /// The bucket, as the time to send it at `rate`, in 64 ns ticks.
    pub buffer: u32,
    /// Bytes the queue behind the bucket may hold before dropping.
    pub limit: u32,
}

impl Tbf {
    /// The tbf for `limit` on a link of `mtu`, computed as the reference
    /// plugin does (plugins/meta/bandwidth, `createTBF`): rate and burst
    /// from bits to bytes; `buffer` = the time to send the burst at the
    /// rate, in ticks; `limit` = 25 ms of traffic at the rate plus the
    /// burst. Where its 32-bit arithmetic would wrap (a burst of more than
    /// ~4.29 s of traffic, as containerd's 4294967295 bits at a few
    /// Mbit/s) the buffer is clamped to what the kernel keeps instead, and
    /// the limit saturates.
    ///
    /// Refused, with the reason: a zero rate, a burst of 4 GiB or more (the
    /// reference plugin's bound), and a bucket that cannot hold one
    /// full-size frame of the link (tbf would drop every such frame).
    pub fn for_limit(limit: Limit, mtu: u32) -> Result<Tbf, String> {
        let rate = limit.rate / 8;
        let burst = limit.burst / 8;
        if rate == 0 {
            return Err(format!(
                "rate {} bit/s is less than one byte per second",
                limit.rate
            ));
        }
        if burst >= u64::from(u32::MAX) {
            return Err(format!(
                "burst {} bits is 4 GiB or more; tbf counts it in 32 bits",
                limit.burst
            ));
        }
        let ns = u128::from(burst) * 1_000_000_000 / u128::from(rate);
        let ticks = (ns / u128::from(NS_PER_TICK)).min(u128::from(MAX_BUFFER_TICKS)) as u64;
        let tbf = Tbf {
            rate,
            buffer: ticks as u32,
            limit: (rate * LATENCY_MS / 1000 + burst).min(u64::from(u32::MAX)) as u32,
        };
        let frame = u64::from(mtu) + ETH_HLEN;
        if tbf.bucket_bytes() < frame {
            return Err(format!(
                "burst {} bits holds {} bytes at {} bit/s, less than one full-size frame ({frame} bytes at MTU {mtu}): every such frame would be dropped",
                limit.burst,
                tbf.bucket_bytes(),
                limit.rate
            ));
        }
        Ok(tbf)
    }

    /// How many bytes the bucket holds: what the kernel computes from
    /// `buffer` and `rate` (`psched_ns_t2l`), the largest packet it sends.
    pub fn bucket_bytes(&self) -> u64 {
        let ns = u128::from(self.buffer) * u128::from(NS_PER_TICK);
        (ns * u128::from(self.rate) / 1_000_000_000).min(u128::from(u32::MAX)) as u64
    }

    /// This tbf as the limit it enforces, in CNI's units. The burst is the
    /// bucket as the kernel holds it, so it can be less than was asked
    /// (clamped) or differ from it by the rounding to ticks.
    pub fn as_limit(&self) -> Limit {
        Limit {
            rate: self.rate * 8,
            burst: self.bucket_bytes() * 8,
        }
    }

    /// `TCA_OPTIONS` for `tbf`: `TCA_TBF_PARMS`, and `TCA_TBF_RATE64` when
    /// the rate does not fit the 32-bit field (from 32 GiB/s, as `tc` does).
    pub(crate) fn options(&self) -> Vec<TcOption> {
        let mut qopt = [0u8; QOPT_LEN];
        qopt[RATESPEC_LINKLAYER_AT] = LINKLAYER_ETHERNET;
        let rate32 = u32::try_from(self.rate).unwrap_or(u32::MAX);
        qopt[RATESPEC_RATE_AT..RATESPEC_RATE_AT + 4].copy_from_slice(&rate32.to_ne_bytes());
        qopt[LIMIT_AT..LIMIT_AT + 4].copy_from_slice(&self.limit.to_ne_bytes());
        qopt[BUFFER_AT..BUFFER_AT + 4].copy_from_slice(&self.buffer.to_ne_bytes());
        let mut options = vec![TcOption::Other(DefaultNla::new(
            TCA_TBF_PARMS,
            qopt.to_vec(),
        ))];
        if rate32 == u32::MAX {
            options.push(TcOption::Other(DefaultNla::new(
                TCA_TBF_RATE64,
                self.rate.to_ne_bytes().to_vec(),
            )));
        }
        options
    }

    /// Reads a dumped tbf's `TCA_OPTIONS`. netlink-packet-route hands the
    /// options of a kind it does not know as one opaque attribute holding
    /// the nested ones.
    pub(crate) fn from_options(options: &[TcOption]) -> Option<Tbf> {
        let mut tbf = None;
        let mut rate64 = None;
        for option in options {
            let TcOption::Other(nested) = option else {
                continue;
            };
            let mut value = vec![0u8; nested.value_len()];
            nested.emit_value(&mut value);
            for nla in NlasIterator::new(&value[..]).flatten() {
                let v = nla.value();
                match nla.kind() {
                    TCA_TBF_PARMS if v.len() >= QOPT_LEN => {
                        let u32_at =
                            |at: usize| u32::from_ne_bytes(v[at..at + 4].try_into().unwrap());
                        tbf = Some(Tbf {
                            rate: u64::from(u32_at(RATESPEC_RATE_AT)),
                            buffer: u32_at(BUFFER_AT),
                            limit: u32_at(LIMIT_AT),
                        });
                    }
                    TCA_TBF_RATE64 if v.len() == 8 => {
                        rate64 = Some(u64::from_ne_bytes(v.try_into().unwrap()));
                    }
                    _ => {}
                }
            }
        }
        let mut tbf = tbf?;
        if let Some(rate) = rate64 {
            tbf.rate = rate;
        }
        Some(tbf)
    }
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::Emitable;

    use super::*;

    fn limit(rate: u64, burst: u64) -> Limit {
        Limit { rate, burst }
    }

    #[test]
    fn computed_as_the_reference_plugin_does() {
        // 10 Mbit/s with a 100 kbit burst: 1.25 MB/s, 12500 bytes, which
        // take 10 ms = 156250 ticks; the queue holds 25 ms (31250 bytes)
        // plus the burst.
        let tbf = Tbf::for_limit(limit(10_000_000, 100_000), 1500).unwrap();
        assert_eq!(
            tbf,
            Tbf {
                rate: 1_250_000,
                buffer: 156_250,
                limit: 31_250 + 12_500
            }
        );
        assert_eq!(tbf.bucket_bytes(), 12_500);
        assert_eq!(tbf.as_limit(), limit(10_000_000, 100_000));
    }

    #[test]
    fn containerds_burst_is_clamped_to_what_the_kernel_keeps() {
        // containerd sends 4294967295 bits (512 MiB) with every rate: at
        // 10 Mbit/s that is 429 s of traffic; the kernel keeps 4.29 s.
        let tbf = Tbf::for_limit(limit(10_000_000, u64::from(u32::MAX)), 1500).unwrap();
        assert_eq!(u64::from(tbf.buffer), MAX_BUFFER_TICKS);
        assert_eq!(tbf.bucket_bytes(), 5_368_709);
        assert_eq!(tbf.limit, 31_250 + 536_870_911);
        // CRI-O's 8 * 4294967295 - 1 bits is just under the 4 GiB bound.
        let crio = Tbf::for_limit(limit(10_000_000, 8 * u64::from(u32::MAX) - 1), 1500).unwrap();
        assert_eq!(crio.limit, u32::MAX);
    }

    #[test]
    fn nonsense_is_refused_with_the_reason() {
        let err = |l: Limit| Tbf::for_limit(l, 1500).unwrap_err();
        assert!(err(limit(7, 100_000)).contains("rate 7 bit/s"));
        assert!(err(limit(10_000_000, 8 * u64::from(u32::MAX))).contains("4 GiB"));
        // A burst smaller than one frame of the link.
        assert!(err(limit(10_000_000, 8 * 1513)).contains("full-size frame"));
        Tbf::for_limit(limit(10_000_000, 8 * 1514), 1500).unwrap();
        // A generous burst at a crawl: 4.29 s at 1 kbit/s is 536 bytes.
        assert!(err(limit(1000, 1_000_000)).contains("holds 536 bytes"));
    }

    #[test]
    fn options_round_trip_through_the_kernel_layout() {
        for tbf in [
            Tbf::for_limit(limit(10_000_000, 100_000), 1500).unwrap(),
            // 40 GiB/s: the rate only fits TCA_TBF_RATE64.
            Tbf::for_limit(limit(8 * 40 * (1 << 30), 8 * 1_000_000), 9000).unwrap(),
        ] {
            // What the kernel sends back: the options nested in one
            // TCA_OPTIONS, which netlink-packet-route keeps opaque.
            let opts = tbf.options();
            let mut nested = vec![0u8; opts.as_slice().buffer_len()];
            opts.as_slice().emit(&mut nested);
            let dumped = [TcOption::Other(DefaultNla::new(2, nested))];
            assert_eq!(Tbf::from_options(&dumped), Some(tbf));
        }
        let parms = &Tbf::for_limit(limit(10_000_000, 100_000), 1500)
            .unwrap()
            .options()[0];
        let mut bytes = vec![0u8; parms.value_len()];
        parms.emit_value(&mut bytes);
        assert_eq!(bytes.len(), 36);
        assert_eq!(bytes[1], 1, "linklayer ethernet");
        assert_eq!(&bytes[8..12], &1_250_000u32.to_ne_bytes(), "rate");
        assert_eq!(&bytes[12..24], &[0; 12], "no peak rate");
        assert_eq!(&bytes[28..32], &156_250u32.to_ne_bytes(), "buffer");
        assert_eq!(&bytes[32..36], &[0; 4], "no mtu: it is for the peak rate");
    }
}

//! The QingCloud API client's response decoder: the `{ret_code, message}`
//! envelope, then the action's typed answer when `ret_code` is 0, and the
//! classification of other codes (retry, re-sign, cool down, fail), run
//! through `hostnic_iaas::fuzzing`.
//!
//! Input layout: the first byte chooses the answer, the rest is the HTTP
//! body.
//! - Low nibble (mod 9) = the action's response shape; the ASCII digits
//!   '0'..='8' name them directly:
//!   0 DescribeNics, 1 DescribeVxNets, 2 DescribeInstances, 3 DescribeJobs,
//!   4 DescribeTags, 5 CreateNics, 6 AttachNics (= DetachNics),
//!   7 CreateTag, 8 AttachTags (= DeleteNics).
//! - High nibble = the HTTP status: 0x0..=0x7 (so any ASCII byte) 200,
//!   0x8 400, 0x9 404, 0xA 429, 0xB 500, 0xC 502, 0xD 503, 0xE 504, 0xF 599.
//!
//! So a seed is a digit followed by a JSON answer, e.g.
//! `0{"ret_code":0,"total_count":0,"nic_set":[]}`.

#![no_main]

use hostnic_iaas::fuzzing;
use libfuzzer_sys::fuzz_target;

const SHAPES: [fn(u16, &[u8]); 9] = [
    fuzzing::describe_nics,
    fuzzing::describe_vxnets,
    fuzzing::describe_instances,
    fuzzing::describe_jobs,
    fuzzing::describe_tags,
    fuzzing::create_nics,
    fuzzing::attach_nics,
    fuzzing::create_tag,
    fuzzing::attach_tags,
];

const STATUS: [u16; 8] = [400, 404, 429, 500, 502, 503, 504, 599];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let shape = SHAPES[usize::from(selector & 0x0f) % SHAPES.len()];
    let status = match selector >> 4 {
        0..=7 => 200,
        high => STATUS[usize::from(high - 8)],
    };
    shape(status, body);
});

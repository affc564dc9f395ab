//! The agent's RPC framing: a 4-byte big-endian length, then that many bytes
//! of JSON. Input: the bytes a peer writes to the agent's socket (the agent
//! reads a `Request`; the CNI executable reads a `Response`).
//!
//! Checks, besides "no panic, no hang, no unbounded allocation" (a header
//! may announce up to 1 MiB; more is refused before allocating):
//! - `frame_len` accepts exactly the headers up to `MAX_FRAME`;
//! - a `Request` or `Response` that decodes re-encodes with `encode_frame`
//!   and decodes again to the same JSON value.
//!
//! The seeds (fuzz/seeds/rpc_frame/*.bin) are frames as `hostnic` and the
//! agent write them: the 4-byte length, then the JSON. To add one:
//! `python3 -c 'import sys,struct; b=sys.argv[1].encode(); sys.stdout.buffer.write(struct.pack(">I",len(b))+b)' '{"version":1,"op":"status"}' >fuzz/seeds/rpc_frame/NAME.bin`

#![no_main]

use hostnic_proto::rpc::{self, MAX_FRAME, Request, Response};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// JSON equality, except that floats (only in `prev_result`, which is
/// relayed as an opaque `Value`) may differ in the last bits: serde_json's
/// default float parser is best-effort (without its `float_roundtrip`
/// feature, which the project does not enable), so a printed float may read
/// back one ULP off. That is serde_json's documented trade-off, not a
/// framing bug.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => {
                    x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs())
                }
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(msg: &T, what: &str) {
    let before = serde_json::to_value(msg).expect("a decoded message serialises");
    let frame = match rpc::encode_frame(msg) {
        Ok(f) => f,
        // Re-encoding can be longer than the input ("1e9" prints as
        // "1000000000.0"); only a body over the limit may be refused.
        Err(e) => {
            let len = serde_json::to_vec(msg).expect("serialises").len();
            assert!(
                len > MAX_FRAME,
                "{what}: encode_frame refused {len} bytes: {e}"
            );
            return;
        }
    };
    let again: T = rpc::read_frame(&mut frame.as_slice())
        .unwrap_or_else(|e| panic!("{what}: a re-encoded frame does not decode: {e}"));
    let after = serde_json::to_value(&again).expect("a decoded message serialises");
    assert!(
        same(&before, &after),
        "{what} changed in a round trip:\n{before}\n{after}"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.first_chunk::<4>() {
        let announced = u32::from_be_bytes(*header) as usize;
        match rpc::frame_len(*header) {
            Ok(n) => assert!(n == announced && n <= MAX_FRAME),
            Err(_) => assert!(announced > MAX_FRAME),
        }
    }
    if let Ok(req) = rpc::read_frame::<Request>(&mut &data[..]) {
        let _ = req.op.name();
        round_trip(&req, "request");
    }
    if let Ok(resp) = rpc::read_frame::<Response>(&mut &data[..]) {
        round_trip(&resp, "response");
    }
});

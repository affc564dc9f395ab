//! Test guest: select-vxnet answers `ok` with a list of 5 million copies of
//! a 100-byte id: 500 MB of strings once the host has lifted it into its
//! own memory. The host must cap the answer (wasmtime's hostcall fuel, or
//! a length check on a `WasmList` before lifting its strings) and refuse
//! it; the agent keeps serving.
//!
//! Every list entry points at the same 100 bytes. The canonical ABI allows
//! that, and it is what a hostile guest would do: the guest's memory holds
//! only the list of (pointer, length) pairs, 8 bytes an entry, so the
//! guest's memory cap does not bound the answer the host would build.
//! (A guest that built 5 million real `String`s would need ~650 MB and
//! would only test the memory cap, which `hostile-oom` already does.)
//!
//! 5 million entries need 40 MB of guest memory (~41 MiB with the rest):
//! under a smaller memory cap this guest traps out of memory before it
//! answers. The config string, if not empty, is the number of copies, so a
//! test can fit the list in the cap it runs under: "1000000" needs ~9 MiB
//! and still lifts to 100 MB of strings.
//!
//! wit-bindgen's generated export can only return distinct owned strings,
//! so select-vxnet is exported by hand below, with the canonical ABI's
//! lowering of its signature on wasm32; validate-config uses the generated
//! glue.

wit_bindgen::generate!({ path: "../../wit", world: "vxnet-selection" });

/// Entries in the answer when the config is empty.
const DEFAULT_COPIES: usize = 5_000_000;

/// The number of copies the config asks for.
fn copies(config: &str) -> Result<usize, String> {
    let config = config.trim();
    if config.is_empty() {
        return Ok(DEFAULT_COPIES);
    }
    match config.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "hostile-huge config is a number of copies (empty: {DEFAULT_COPIES}), not {config:?}"
        )),
    }
}

struct Huge;

impl exports::hostnic::policy::config::Guest for Huge {
    fn validate_config(config: String) -> Result<(), String> {
        copies(&config).map(drop)
    }
}

// Only the config interface goes through wit-bindgen's export glue (the
// per-interface half of what `export!` expands to).
exports::hostnic::policy::config::__export_hostnic_policy_config_0_1_3_cabi!(
    Huge with_types_in exports::hostnic::policy::config
);

#[cfg(target_arch = "wasm32")]
mod select {
    /// The one id every entry points at: 100 bytes of UTF-8.
    static ID: [u8; 100] = [b'x'; 100];

    /// The return area of `result<list<string>, reason>`: the case (a u8,
    /// padded to 4 bytes; 0 is `ok`, 1 is `err`), then the list's (or the
    /// reason's) pointer and length. It must outlive the call: the host
    /// reads it after we return.
    static mut RET: [usize; 3] = [0; 3];

    /// The core export behind `select-vxnet`. Its parameters flatten to
    /// more than 16 values, so the host passes them in memory at `args`;
    /// we read the first, `config: string`, and ignore (and leak) the
    /// rest: the instance is dropped after the call. The result does not
    /// fit one value, so we return a pointer to the return area. No
    /// `cabi_post_select-vxnet`: there is nothing to free.
    #[unsafe(export_name = "select-vxnet")]
    extern "C" fn select_vxnet(args: *mut u8) -> *mut u8 {
        // SAFETY: the canonical ABI puts `config` first in the parameter
        // area (8-aligned) as (pointer, length) into this memory, and the
        // host has checked the bytes are UTF-8.
        let config = unsafe {
            let [ptr, len] = args.cast::<[usize; 2]>().read();
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(ptr as *const u8, len))
        };
        let answer = match super::copies(config) {
            Ok(n) => {
                // A string in a list is (pointer, length): two u32 on wasm32.
                let entry = [ID.as_ptr() as usize, ID.len()];
                let list: &'static [[usize; 2]] = vec![entry; n].leak();
                [0, list.as_ptr() as usize, list.len()]
            }
            Err(reason) => {
                let reason: &'static str = reason.leak();
                [1, reason.as_ptr() as usize, reason.len()]
            }
        };
        let ret = &raw mut RET;
        // SAFETY: wasm32 guests are single-threaded and the host does not
        // re-enter an instance during a call, so nothing else touches RET.
        unsafe { ret.write(answer) };
        ret.cast()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_is_the_number_of_copies() {
        assert_eq!(super::copies(""), Ok(5_000_000));
        assert_eq!(super::copies(" 1000 "), Ok(1000));
        assert!(super::copies("0").is_err());
        assert!(super::copies("many").is_err());
    }
}

//! The sha256 that names a module everywhere: in a hook's pin, in its
//! [`GuestId`](crate::GuestId), in the compiled caches (memory and disk).
//! A leaf: what loads, caches and embeds modules all need it.

use sha2::{Digest, Sha256};

/// The hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

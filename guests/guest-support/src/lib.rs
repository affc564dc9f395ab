//! What the default policy guests share.
//!
//! The host hands guests addresses as strings in their usual text form and
//! re-checks every address a guest returns; these helpers let a guest check
//! them first, so that a refusal carries a reason naming the value at fault
//! rather than the host's generic "bad answer".

mod cidr;
mod config;

pub use cidr::Cidr;
pub use config::parse_config;

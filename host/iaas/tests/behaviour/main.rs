//! hostnic-iaas against a scripted cloud on 127.0.0.1 (no root, no network
//! beyond loopback). One test binary, so the crate links once.

mod actions;
mod jobs;
mod retries;
mod server;

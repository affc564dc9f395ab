//! Builds the policy guests (`guests/`, a cargo workspace of its own, for
//! `wasm32-wasip2`) so that the built-in defaults can be embedded and the
//! tests can load every guest: `HOSTNIC_GUESTS_DIR` is where the `.wasm`
//! files are.
//!
//! The nested cargo uses its own target directory (`target/guests`): the
//! outer build holds the lock on its own, so sharing it would deadlock.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .ancestors()
        .nth(2)
        .expect("host/policy is two levels below the workspace root")
        .to_owned();
    let guests = root.join("guests");
    let target_dir = root.join("target").join("guests");

    watch(&guests, &root);
    check_target_installed();

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--locked", "--target", TARGET])
        .arg("--manifest-path")
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // What the outer cargo (or the person running it) set for the host
    // build must not leak into the guests' build:
    // - flags meant for the host target (RUSTFLAGS may carry
    //   `-C target-cpu=native` or coverage instrumentation, meaningless or
    //   fatal for wasm; cargo hands build scripts CARGO_ENCODED_RUSTFLAGS,
    //   which a nested cargo would read back as its own flags);
    // - the outer target dir and target triple (passed explicitly above);
    // - clippy's driver: under `cargo clippy` the nested build would lint
    //   the guests with the host's `-D warnings`.
    // The jobserver (CARGO_MAKEFLAGS) is kept on purpose: the nested build
    // then shares the outer build's job slots instead of doubling the load.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTDOCFLAGS",
        "CARGO_ENCODED_RUSTDOCFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    for (var, _) in env::vars_os() {
        let var = var.to_string_lossy();
        // Cargo-internal variables (`__CARGO_FIX_PLZ`, `__CARGO_DEFAULT_LIB_METADATA`).
        if var.starts_with("__CARGO") {
            cmd.env_remove(var.as_ref());
        }
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the policy guests: {e}"));
    if !status.success() {
        let lock = guests.join("Cargo.lock");
        let hint = if lock.exists() {
            String::new()
        } else {
            format!(
                "\n{} is missing: run `cargo generate-lockfile --manifest-path {}` once",
                lock.display(),
                guests.join("Cargo.toml").display()
            )
        };
        panic!(
            "building the policy guests (guests/) for {TARGET} failed; see the output above{hint}"
        );
    }

    let out = target_dir.join(TARGET).join("release");
    for name in ["vxnet_select", "ip_assign", "routes"] {
        let wasm = out.join(format!("{name}.wasm"));
        assert!(
            wasm.exists(),
            "the guests build did not produce {}",
            wasm.display()
        );
    }
    println!("cargo:rustc-env=HOSTNIC_GUESTS_DIR={}", out.display());
}

/// Rebuild when a guest's sources, the guests workspace or the contract
/// change. Listed file by file rather than `guests/` as a whole, which
/// would include a `guests/target` left by running the guests' own tests.
fn watch(guests: &Path, root: &Path) {
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    for f in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guests.join(f).display());
    }
    // (Not `guests/` itself: cargo scans a directory recursively, and a new
    // crate only builds once it is in the workspace's members anyway.)
    let Ok(entries) = std::fs::read_dir(guests) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if dir.join("Cargo.toml").exists() {
            for f in ["Cargo.toml", "src", "wit", "build.rs"] {
                let p = dir.join(f);
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
        }
    }
}

/// Fails early, with the fix, when the wasm32-wasip2 standard library is
/// not installed (rustup reads rust-toolchain.toml, but older rustup
/// versions do not add its targets to an installed toolchain).
fn check_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(&rustc).args(["--print", "sysroot"]).output() else {
        return; // cargo will say what is wrong with rustc itself
    };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !sysroot.join("lib/rustlib").join(TARGET).exists() {
        panic!(
            "the {TARGET} target is not installed for {}: run `rustup target add {TARGET}` \
             (scripts/setup does it)",
            sysroot.display()
        );
    }
}

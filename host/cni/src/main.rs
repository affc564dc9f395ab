//! `hostnic`: the CNI executable. See the library for what it does.

use std::io::Write;
use std::process::ExitCode;

use hostnic::{Env, Outcome, read_stdin, run};

fn main() -> ExitCode {
    let env = Env::from_process();
    let stdin = read_stdin(&mut std::io::stdin().lock());
    let (value, exit) = match run(&env, stdin) {
        Outcome::Success(v) => (v, ExitCode::SUCCESS),
        Outcome::Failure(v) => (Some(v), ExitCode::FAILURE),
    };
    if let Some(v) = value {
        let mut out = std::io::stdout().lock();
        // Nothing else ever goes to stdout: it is the runtime's to parse.
        // If stdout is gone there is no one left to tell.
        let _ = writeln!(out, "{v}").and_then(|()| out.flush());
    }
    exit
}

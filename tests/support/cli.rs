//! Running the `dragonlock` binary from process tests.

use std::process::{Command, Output, Stdio};

use super::server::Server;

/// Runs `dragonlock` with `args` and no stdin, and waits for it.
pub fn dragonlock(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dragonlock"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// `host:port,host:port,…` for `--nodes`.
pub fn node_list(servers: &[Server]) -> String {
    servers
        .iter()
        .map(|s| s.addr())
        .collect::<Vec<_>>()
        .join(",")
}

/// The exit code, or -1 for a process killed by a signal.
pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

//! Hostile scripts against a real server: values nested to overflow a stack,
//! and scripts that outlive their caller.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{within, Stock};
use rrpc_server::services::ToolboxOptions;

/// A script whose every operation is slow (it clones a big array), so that
/// without cancellation it would run for minutes within its operation budget.
const SLOW_FOREVER: &str = "let big = []; big.pad(90000, 0); loop { let copy = big; }";

#[tokio::test]
async fn a_script_stops_when_its_caller_times_out() {
    within(60, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let script = stock.service("script").await;
        let timed_out = script
            .call("execute", (SLOW_FOREVER,))
            .timeout(Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(timed_out.is_timeout(), "{timed_out}");
        // The connection's scope is locked while its script runs: the probe
        // is answered only once the script has stopped.
        let started = Instant::now();
        let probe = script
            .call("eval", ("1",))
            .timeout(Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(probe.as_i64(), Some(1));
        assert!(started.elapsed() < Duration::from_secs(10));
    })
    .await
}

#[tokio::test]
async fn a_script_stops_when_its_connection_ends() {
    within(60, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let leaver = stock.another_connection().await;
        let script = leaver
            .root()
            .get("script")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        // Started, then the connection goes away without waiting.
        let running = script.call("execute", (SLOW_FOREVER,)).start();
        // Wait (bounded) for it to be running on its thread.
        let deadline = Instant::now() + Duration::from_secs(20);
        while script_threads() == 0 {
            assert!(Instant::now() < deadline, "the script never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(running);
        drop(script);
        leaver.close();
        drop(leaver);
        // The server keeps one thread per running script: a script thread
        // that never stopped shows in /proc. Wait (bounded) for it to end.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let scripts = script_threads();
            if scripts == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{scripts} script thread(s) still running after the connection ended"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Threads of this process named like the script threads.
fn script_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "rrpc-script")
        .count()
}

/// The attack, at a depth a debug build runs in seconds: Rhai clones
/// and drops nested values recursively, which used to overflow the 2 MiB
/// stack of a blocking thread and abort the whole server (and this test).
#[tokio::test]
async fn deeply_nested_values_are_refused_and_the_server_keeps_serving() {
    within(120, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let script = stock.service("script").await;
        for code in [
            "a = []; for i in 0..3000 { a = [a]; }",
            "m = #{}; for i in 0..3000 { m = #{ inner: m }; }",
        ] {
            let err = script
                .call("execute", (code,))
                .timeout(Duration::from_secs(100))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("MAX_DEPTH"), "{err}");
        }
        let err = script
            .call("eval", ("let a = []; for i in 0..3000 { a = [a]; } a",))
            .timeout(Duration::from_secs(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("MAX_DEPTH"), "{err}");
        let probe = script.call("eval", ("1 + 1",)).await.unwrap();
        assert_eq!(probe.as_i64(), Some(2));
    })
    .await
}

//! The `proc` service against a real server: run, spawn, their errors.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{expect_err, i, s, within, Stock};
use rrpc_client::{ErrorKind, Function, Value};
use rrpc_server::services::ToolboxOptions;

#[tokio::test]
async fn run_returns_status_output_and_duration() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let proc = stock.service("proc").await;
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().display().to_string();
        let env = Value::Map(vec![("GREETING".into(), "hej".into())]);
        let done = proc
            .call(
                "run",
                (
                    "sh",
                    vec!["-c", "echo $GREETING; pwd; echo oops >&2; exit 3"],
                    env,
                    cwd.as_str(),
                    10.0,
                ),
            )
            .await
            .unwrap();
        assert_eq!(i(&done, "exit_code"), 3);
        assert_eq!(done.get("success").unwrap().as_bool(), Some(false));
        let canon = dir.path().canonicalize().unwrap().display().to_string();
        assert_eq!(s(&done, "stdout"), format!("hej\n{canon}\n"));
        assert_eq!(s(&done, "stderr"), "oops\n");
        assert!(done.get("duration").unwrap().as_f64().unwrap() >= 0.0);

        // Input, and the server's sys.env as the base environment.
        let sys = stock.service("sys").await;
        let env_map = sys.get("env").await.unwrap().into_proxy().unwrap();
        env_map
            .call("set", ("RRPC_TEST_VAR", "from-sys-env"))
            .await
            .unwrap();
        let options = Value::Map(vec![("stdin".into(), "piped in".into())]);
        let done = proc
            .call(
                "run",
                (
                    "sh",
                    vec!["-c", "cat; echo \" $RRPC_TEST_VAR\""],
                    (),
                    (),
                    (),
                    options,
                ),
            )
            .await
            .unwrap();
        assert_eq!(s(&done, "stdout"), "piped in from-sys-env\n");

        // Output past the cap is dropped and says so.
        let options = Value::Map(vec![("max_output".into(), 1000.into())]);
        let done = proc
            .call(
                "run",
                (
                    "sh",
                    vec!["-c", "head -c 100000 /dev/zero"],
                    (),
                    (),
                    (),
                    options,
                ),
            )
            .await
            .unwrap();
        assert_eq!(s(&done, "stdout").len(), 1000);
        assert_eq!(done.get("stdout_truncated").unwrap().as_bool(), Some(true));
        assert_eq!(i(&done, "exit_code"), 0);
    })
    .await
}

#[tokio::test]
async fn failures_and_timeouts_are_clear_errors() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let proc = stock.service("proc").await;

        let msg = expect_err(
            proc.call("run", ("rrpc-no-such-command",)).await,
            ErrorKind::NotFound,
        );
        assert!(msg.contains("rrpc-no-such-command"), "{msg}");

        // Not executable: refused by the kernel even for root.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script.sh");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        let path = script.display().to_string();
        let msg = expect_err(
            proc.call("run", (path.as_str(),)).await,
            ErrorKind::PermissionDenied,
        );
        assert!(
            msg.contains("script.sh") && msg.contains("ermission denied"),
            "{msg}"
        );

        // A timeout kills the whole process group, and says so.
        let started = Instant::now();
        let marker = dir.path().join("survivor");
        let cmd = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let msg = expect_err(
            proc.call("run", ("sh", vec!["-c", cmd.as_str()], (), (), 0.5))
                .await,
            ErrorKind::Timeout,
        );
        assert!(
            msg.contains("timeout of 0.5 s") && msg.contains("killed"),
            "{msg}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        let msg = expect_err(
            proc.call("run", ("sh", "not a list")).await,
            ErrorKind::BadArgument,
        );
        assert!(msg.contains("args"), "{msg}");

        // The connection is fine afterwards.
        let done = proc.call("run", ("true",)).await.unwrap();
        assert_eq!(i(&done, "exit_code"), 0);
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(!marker.exists(), "a grandchild outlived the timeout");
    })
    .await
}

#[tokio::test]
async fn spawned_processes_stream_output_and_can_be_killed() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let proc = stock.service("proc").await;
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let sink = seen.clone();
        let on_output = Function::blocking("on_output", move |mut a| {
            let stream: String = a.take(0, "stream")?;
            let text: String = a.take(1, "text")?;
            sink.lock().unwrap().push((stream, text));
            Ok(())
        });
        let p = proc
            .call(
                "spawn",
                (
                    "sh",
                    vec!["-c", "echo first; read x; echo got $x; echo bad >&2"],
                    (),
                    (),
                    on_output.into_value(),
                ),
            )
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        assert!(p.get("pid").await.unwrap().as_i64().unwrap() > 0);
        // Output arrives while the process still runs (it waits for input).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !seen
            .lock()
            .unwrap()
            .iter()
            .any(|(_, t)| t.contains("first"))
        {
            assert!(Instant::now() < deadline, "no output delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.get("running").await.unwrap().as_bool(), Some(true));
        assert_eq!(p.call("poll", ()).await.unwrap(), Value::Unit);
        p.call("write", ("input\n",)).await.unwrap();
        let done = p.call("wait", (10.0,)).await.unwrap();
        assert_eq!(i(&done, "exit_code"), 0);
        let seen = seen.lock().unwrap().clone();
        let all_out: String = seen
            .iter()
            .filter(|(s, _)| s == "stdout")
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(all_out, "first\ngot input\n");
        assert!(
            seen.iter().any(|(s, t)| s == "stderr" && t == "bad\n"),
            "{seen:?}"
        );

        // Kill, and wait with a timeout.
        let p = proc
            .call("spawn", ("sleep", vec!["30"]))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let msg = expect_err(p.call("wait", (0.2,)).await, ErrorKind::Timeout);
        assert!(msg.contains("still running"), "{msg}");
        assert_eq!(
            p.call("kill", ("TERM",)).await.unwrap().as_bool(),
            Some(true)
        );
        let done = p.call("wait", (10.0,)).await.unwrap();
        assert_eq!(i(&done, "signal"), 15);
        expect_err(p.call("kill", ("NOSUCHSIG",)).await, ErrorKind::BadArgument);

        // Dropping the last proxy kills the process.
        let p = proc
            .call("spawn", ("sleep", vec!["30"]))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let pid = p.get("pid").await.unwrap().as_i64().unwrap();
        drop(p);
        let alive = || {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() {
            assert!(
                Instant::now() < deadline,
                "the orphaned process {pid} still runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn closing_the_connection_kills_its_processes() {
    within(30, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let proc = stock.service("proc").await;
        let p = proc
            .call("spawn", ("sleep", vec!["30"]))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let pid = p.get("pid").await.unwrap().as_i64().unwrap();
        stock.conn.close();
        let alive = || {
            std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() {
            assert!(
                Instant::now() < deadline,
                "process {pid} outlived its connection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(p);
    })
    .await
}

//! vmctl's services with the shared secret and TLS, as real processes on
//! 127.0.0.1: the integrator with a secret admits only clients that know
//! it; the agent and the integrator over TLS admit clients that trust the
//! CA and give plain-TCP clients a clear error; and the services that call
//! each other pass the secret and TLS on — a shutdown job (`vmctl
//! shutdown-block`, run by the integrator's queue) reaching the integrator,
//! which reaches a node agent with client certificates required; and (with
//! QEMU and the test guest) a `vmctl launch-job` registering its VM with a
//! secured integrator, which then powers it down through the job's secured
//! agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{next_event, recorder};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rrpc_client::tls::TlsClient;
use rrpc_client::{from_value, Error};
use rrpc_core::handshake::Secret;
use rrpc_server::tls::ClusterCerts;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use vmctl::integrator::service::{ShutdownOutcome, Status};
use vmctl::security::ClientSecurity;

/// Every test's overall limit (the QEMU one boots a guest under TCG).
const TEST_TIMEOUT: Duration = Duration::from_secs(180);
const CONNECT: Duration = Duration::from_secs(10);
const AGENT_READY: &str = "vmctl agent listening on ";
const INTEGRATOR_READY: &str = "vmctl integrator listening on ";

/// A cluster's certificates and secret in a temporary directory.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new(secret: &str) -> Keys {
        let dir = tempfile::tempdir().unwrap();
        ClusterCerts::generate(&[])
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        std::fs::write(dir.path().join("secret"), format!("{secret}\n")).unwrap();
        Keys { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn tls(&self) -> TlsClient {
        TlsClient::from_pem_files(&self.path("ca.pem"), None).unwrap()
    }

    fn tls_with_client_cert(&self) -> TlsClient {
        TlsClient::from_pem_files(
            &self.path("ca.pem"),
            Some((&self.path("client.pem"), &self.path("client.key"))),
        )
        .unwrap()
    }
}

fn secret(s: &str) -> Option<Secret> {
    Some(Secret::new(s).unwrap())
}

/// A `vmctl` process that printed its ready line; sent SIGTERM (and
/// waited for) when dropped.
struct Service {
    child: Child,
    stdout: BufReader<ChildStdout>,
    addr: String,
}

impl Service {
    /// Runs `vmctl ARGS MORE` (MORE: the arguments that are paths, or
    /// follow them) with `env` and without RRPC_SECRET unless `env` sets
    /// it, and waits for the line starting with `ready`.
    async fn start(args: &[&str], more: &[&Path], env: &[(&str, &str)], ready: &str) -> Service {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmctl"));
        cmd.args(args)
            .args(more)
            .env_remove("RRPC_SECRET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("cannot start vmctl");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).await.unwrap();
        let addr = line
            .trim()
            .strip_prefix(ready)
            .unwrap_or_else(|| panic!("no ready line {ready:?}, got {line:?}"))
            .to_owned();
        Service {
            child,
            stdout,
            addr,
        }
    }

    /// SIGTERM, then the exit code and the rest of stdout.
    async fn stop(mut self, within: Duration) -> (Option<i32>, String) {
        if let Some(pid) = self.child.id() {
            kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        }
        self.finish(within).await
    }

    async fn finish(&mut self, within: Duration) -> (Option<i32>, String) {
        let mut rest = String::new();
        let status = tokio::time::timeout(within, async {
            self.stdout.read_to_string(&mut rest).await.unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .expect("vmctl did not end in time");
        (status.code(), rest)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let (Ok(None), Some(pid)) = (self.child.try_wait(), self.child.id()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// An integrator on local queues, cycling only when asked.
fn integrator_args() -> Vec<&'static str> {
    vec![
        "integrator",
        "--backend",
        "local",
        "--cluster-backend",
        "local",
        "--port",
        "0",
        "--manual",
    ]
}

async fn integrator_status(conn: &rrpc_client::Connection) -> Status {
    let integrator = conn
        .root()
        .get("integrator")
        .await
        .unwrap()
        .into_proxy()
        .unwrap();
    from_value(integrator.call("status", ()).await.unwrap()).unwrap()
}

#[tokio::test]
async fn an_integrator_with_a_secret_serves_only_clients_that_know_it() {
    let work = async {
        let keys = Keys::new("integrator-secret");
        let mut args = integrator_args();
        args.push("--secret-file");
        let integrator = Service::start(
            &args,
            &[
                &keys.path("secret"),
                Path::new("--"),
                Path::new("sleep"),
                Path::new("5"),
            ],
            &[],
            INTEGRATOR_READY,
        )
        .await;
        let addr = integrator.addr.clone();

        let good = ClientSecurity {
            secret: secret("integrator-secret"),
            tls: None,
        };
        let conn = good.connect(addr.as_str(), CONNECT).await.unwrap();
        assert_eq!(integrator_status(&conn).await.cycles, 0);

        // No secret, a wrong one: refused, with a clear error.
        let err = ClientSecurity::none()
            .connect(addr.as_str(), CONNECT)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::AuthFailed(_)), "{err}");
        let wrong = ClientSecurity {
            secret: secret("not-the-secret"),
            tls: None,
        };
        let err = wrong.connect(addr.as_str(), CONNECT).await.unwrap_err();
        assert!(matches!(err, Error::AuthFailed(_)), "{err}");
        assert!(err.to_string().contains("authentication failed"), "{err}");

        // The good client was not disturbed, and new ones still get in.
        assert_eq!(integrator_status(&conn).await.cycles, 0);
        let again = good.connect(addr.as_str(), CONNECT).await.unwrap();
        assert_eq!(integrator_status(&again).await.cycles, 0);

        // `vmctl shutdown-block` without the secret says why it failed;
        // with it (from RRPC_SECRET) it gets through.
        let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .args(["shutdown-block", "--integrator", &addr, "blk-x"])
            .env_remove("RRPC_SECRET")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("authentication failed"), "{stderr}");
        let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .args(["shutdown-block", "--integrator", &addr, "blk-x"])
            .env("RRPC_SECRET", "integrator-secret")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("no such block"), "{stdout}");

        assert_eq!(integrator_status(&conn).await.cycles, 0);
        conn.close();
        again.close();
        let (code, _) = integrator.stop(Duration::from_secs(15)).await;
        assert_eq!(code, Some(0));
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}

#[tokio::test]
async fn an_agent_over_tls_admits_clients_that_trust_its_ca() {
    let work = async {
        let keys = Keys::new("agent-secret");
        // The secret from the environment this time.
        let agent = Service::start(
            &["agent", "--port", "0", "--block", "5", "--tls-cert"],
            &[
                &keys.path("server.pem"),
                Path::new("--tls-key"),
                &keys.path("server.key"),
            ],
            &[("RRPC_SECRET", "agent-secret")],
            AGENT_READY,
        )
        .await;
        let addr = agent.addr.clone();

        let good = ClientSecurity {
            secret: secret("agent-secret"),
            tls: Some(keys.tls()),
        };
        let conn = good.connect(addr.as_str(), CONNECT).await.unwrap();
        let node = conn.root().get("node").await.unwrap().into_proxy().unwrap();
        assert_eq!(node.get("block").await.unwrap().as_i64(), Some(5));

        // Plain TCP: a clear handshake error, not a hang.
        let plain = ClientSecurity {
            secret: secret("agent-secret"),
            tls: None,
        };
        let err = plain.connect(addr.as_str(), CONNECT).await.unwrap_err();
        assert!(matches!(err, Error::Handshake(_)), "{err}");
        // TLS trusting another cluster's CA: refused by the client.
        let other = Keys::new("x");
        let stranger = ClientSecurity {
            secret: secret("agent-secret"),
            tls: Some(other.tls()),
        };
        let err = stranger.connect(addr.as_str(), CONNECT).await.unwrap_err();
        assert!(matches!(err, Error::Tls(_)), "{err}");
        // TLS without the secret.
        let no_secret = ClientSecurity {
            secret: None,
            tls: Some(keys.tls()),
        };
        let err = no_secret.connect(addr.as_str(), CONNECT).await.unwrap_err();
        assert!(matches!(err, Error::AuthFailed(_)), "{err}");

        // Still serving the good client.
        assert_eq!(node.get("block").await.unwrap().as_i64(), Some(5));
        conn.close();
        let (code, rest) = agent.stop(Duration::from_secs(30)).await;
        assert_eq!(code, Some(0), "{rest}");
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}

#[tokio::test]
async fn an_integrator_over_tls_admits_clients_that_trust_its_ca() {
    let work = async {
        let keys = Keys::new("unused");
        // Serving TLS with shutdown jobs but no CA to hand them is refused.
        let mut args = integrator_args();
        args.push("--tls-cert");
        let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
            .args(&args)
            .arg(keys.path("server.pem"))
            .arg("--tls-key")
            .arg(keys.path("server.key"))
            .args(["--", "sleep", "1"])
            .env_remove("RRPC_SECRET")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--tls-ca"), "{stderr}");

        let integrator = Service::start(
            &args,
            &[
                &keys.path("server.pem"),
                Path::new("--tls-key"),
                &keys.path("server.key"),
                Path::new("--tls-ca"),
                &keys.path("ca.pem"),
                Path::new("--"),
                Path::new("sleep"),
                Path::new("1"),
            ],
            &[],
            INTEGRATOR_READY,
        )
        .await;
        let addr = integrator.addr.clone();
        let good = ClientSecurity {
            secret: None,
            tls: Some(keys.tls().server_name("localhost")),
        };
        let conn = good.connect(addr.as_str(), CONNECT).await.unwrap();
        assert_eq!(integrator_status(&conn).await.cycles, 0);
        let err = ClientSecurity::none()
            .connect(addr.as_str(), CONNECT)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Handshake(_)), "{err}");
        assert_eq!(integrator_status(&conn).await.cycles, 0);
        conn.close();
        let (code, _) = integrator.stop(Duration::from_secs(15)).await;
        assert_eq!(code, Some(0));
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}

/// The chain without QEMU: an agent with TLS, client certificates and the
/// secret; an integrator with the same; the integrator's cycle decides to
/// shut the idle block down and its queue runs `vmctl shutdown-block`
/// with the secret file and TLS files it was handed, which calls the
/// integrator, which powers the block down through the agent.
#[tokio::test]
async fn a_shutdown_job_reaches_a_secured_integrator_which_reaches_a_secured_agent() {
    let work = async {
        let keys = Keys::new("chain-secret");
        let agent = Service::start(
            &["agent", "--port", "0", "--block", "6"],
            &[
                Path::new("--tls-cert"),
                &keys.path("server.pem"),
                Path::new("--tls-key"),
                &keys.path("server.key"),
                Path::new("--tls-client-ca"),
                &keys.path("ca.pem"),
            ],
            &[("RRPC_SECRET", "chain-secret")],
            AGENT_READY,
        )
        .await;
        let mut args = integrator_args();
        args.extend(["--shutdown-grace", "5"]);
        let integrator = Service::start(
            &args,
            &[
                Path::new("--secret-file"),
                &keys.path("secret"),
                Path::new("--tls-cert"),
                &keys.path("server.pem"),
                Path::new("--tls-key"),
                &keys.path("server.key"),
                Path::new("--tls-client-ca"),
                &keys.path("ca.pem"),
                Path::new("--tls-ca"),
                &keys.path("ca.pem"),
                Path::new("--tls-client-cert"),
                &keys.path("client.pem"),
                Path::new("--tls-client-key"),
                &keys.path("client.key"),
                Path::new("--"),
                Path::new("sleep"),
                Path::new("5"),
            ],
            &[],
            INTEGRATOR_READY,
        )
        .await;

        let me = ClientSecurity {
            secret: secret("chain-secret"),
            tls: Some(keys.tls_with_client_cert()),
        };
        // Without a client certificate the integrator lets nobody in.
        let anonymous = ClientSecurity {
            secret: secret("chain-secret"),
            tls: Some(keys.tls()),
        };
        let refused = anonymous.connect(integrator.addr.as_str(), CONNECT).await;
        match refused {
            Err(_) => {}
            // TLS 1.3 reports a rejected client certificate on first use.
            Ok(conn) => assert!(conn.root().get("integrator").await.is_err()),
        }

        let conn = me.connect(integrator.addr.as_str(), CONNECT).await.unwrap();
        let proxy = conn
            .root()
            .get("integrator")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let (callback, mut events) = recorder();
        proxy.call("subscribe", (callback,)).await.unwrap();
        proxy
            .call("register_vm", ("blk-s", 0, "10.0.2.15"))
            .await
            .unwrap();
        proxy
            .call("register_agent", ("blk-s", agent.addr.clone()))
            .await
            .unwrap();
        let report: vmctl::integrator::CycleReport =
            from_value(proxy.call("run_cycle", ()).await.unwrap()).unwrap();
        assert_eq!(report.shutdowns.len(), 1, "{report:?}");
        assert_eq!(report.shutdown_jobs.len(), 1, "{report:?}");
        let ev = next_event(
            &mut events,
            &["shutdown", "shutdown_dropped"],
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(ev.kind, "shutdown", "{ev:?}");
        assert!(ev.detail.contains("powered down"), "{ev:?}");
        assert_eq!(ev.vms.blocks_shut_down, 1, "{ev:?}");

        conn.close();
        let (code, _) = integrator.stop(Duration::from_secs(15)).await;
        assert_eq!(code, Some(0));
        let (code, rest) = agent.stop(Duration::from_secs(30)).await;
        assert_eq!(code, Some(0), "{rest}");
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}

/// The chain with a real VM: `vmctl launch-job --register` proves the
/// secret and trusts the CA to register its VM with a secured integrator;
/// the integrator then powers the VM down through the job's secured agent.
#[tokio::test]
async fn a_launch_job_registers_with_a_secured_integrator_which_powers_it_down() {
    let work = async {
        let guest = common::guest_dir();
        let keys = Keys::new("vm-secret");
        let mut args = integrator_args();
        args.push("--no-shutdown");
        let integrator = Service::start(
            &args,
            &[
                Path::new("--secret-file"),
                &keys.path("secret"),
                Path::new("--tls-cert"),
                &keys.path("server.pem"),
                Path::new("--tls-key"),
                &keys.path("server.key"),
                Path::new("--tls-ca"),
                &keys.path("ca.pem"),
                Path::new("--"),
                Path::new("sleep"),
                Path::new("5"),
            ],
            &[],
            INTEGRATOR_READY,
        )
        .await;
        let me = ClientSecurity {
            secret: secret("vm-secret"),
            tls: Some(keys.tls()),
        };
        let conn = me.connect(integrator.addr.as_str(), CONNECT).await.unwrap();
        let proxy = conn
            .root()
            .get("integrator")
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let (callback, mut events) = recorder();
        proxy.call("subscribe", (callback,)).await.unwrap();

        let mut job = Service::start(
            &[
                "launch-job",
                "--vm-cpus",
                "1",
                "--vm-mem",
                "128",
                "--count",
                "1",
                "--port",
                "0",
                "--block",
                "12",
                "--grace",
                "30",
                "--register-as",
                "blk-vm",
                "--register",
                &integrator.addr,
            ],
            &[
                Path::new("--guest-dir"),
                &guest,
                Path::new("--secret-file"),
                &keys.path("secret"),
                Path::new("--tls-cert"),
                &keys.path("server.pem"),
                Path::new("--tls-key"),
                &keys.path("server.key"),
                Path::new("--tls-ca"),
                &keys.path("ca.pem"),
            ],
            &[("RUST_LOG", "vmctl=info")],
            AGENT_READY,
        )
        .await;

        // The VM boots and registers through TLS with the secret.
        let ev = next_event(&mut events, &["registered"], Duration::from_secs(150)).await;
        assert!(ev.detail.contains("blk-vm"), "{ev:?}");
        let status = integrator_status(&conn).await;
        assert_eq!(status.blocks.len(), 1, "{status:?}");
        assert_eq!(status.blocks[0].agent.as_deref(), Some(job.addr.as_str()));

        // The integrator reaches the job's agent the same way.
        let outcome: ShutdownOutcome = from_value(
            proxy
                .call("shutdown_block", ("blk-vm", 30.0))
                .timeout(Duration::from_secs(120))
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(outcome.done, "{outcome:?}");
        assert!(
            outcome.reason.contains("1 VM(s) powered down"),
            "{outcome:?}"
        );

        let (code, summary) = job.finish(Duration::from_secs(60)).await;
        assert_eq!(code, Some(0), "{summary}");
        assert!(summary.contains("vm-12-0"), "{summary}");
        assert!(summary.contains("graceful"), "{summary}");
        conn.close();
        let (code, _) = integrator.stop(Duration::from_secs(15)).await;
        assert_eq!(code, Some(0));
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}

/// The warning is printed before the service binds, so an address of the
/// documentation range (TEST-NET-1, on no interface here) shows it without
/// exposing anything: the bind then fails.
#[tokio::test]
async fn serving_the_network_unauthenticated_is_warned_about_unless_deliberate() {
    let work = async {
        let keys = Keys::new("warn-secret");
        let run = |args: Vec<String>| async move {
            let out = Command::new(env!("CARGO_BIN_EXE_vmctl"))
                .args(&args)
                .env_remove("RRPC_SECRET")
                .stdin(Stdio::null())
                .output()
                .await
                .unwrap();
            assert!(!out.status.success(), "{args:?} could bind 192.0.2.1");
            String::from_utf8_lossy(&out.stderr).into_owned()
        };
        let secret_file = keys.path("secret").to_string_lossy().into_owned();
        let agent = |extra: &[&str]| {
            let mut v: Vec<String> = ["agent", "--host", "192.0.2.1", "--port", "0"]
                .map(String::from)
                .to_vec();
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let integrator = |extra: &[&str]| {
            let mut v: Vec<String> = integrator_args().into_iter().map(String::from).collect();
            v.extend(["--host", "192.0.2.1"].map(String::from));
            v.extend(extra.iter().map(|s| s.to_string()));
            v.extend(["--", "sleep", "1"].map(String::from));
            v
        };
        for (what, stderr) in [
            ("agent", run(agent(&[])).await),
            ("integrator", run(integrator(&[])).await),
        ] {
            assert!(
                stderr.contains("WARNING: serving on 192.0.2.1 WITHOUT AUTHENTICATION"),
                "{what}: {stderr}"
            );
            assert!(
                stderr.contains("--allow-unauthenticated"),
                "{what}: {stderr}"
            );
            assert!(stderr.contains("cannot listen"), "{what}: {stderr}");
        }
        for (what, stderr) in [
            ("agent", run(agent(&["--allow-unauthenticated"])).await),
            ("agent", run(agent(&["--secret-file", &secret_file])).await),
            (
                "integrator",
                run(integrator(&["--allow-unauthenticated"])).await,
            ),
            (
                "integrator",
                run(integrator(&["--secret-file", &secret_file])).await,
            ),
        ] {
            assert!(!stderr.contains("WARNING"), "{what}: {stderr}");
            assert!(stderr.contains("cannot listen"), "{what}: {stderr}");
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, work)
        .await
        .expect("the test did not finish within its timeout");
}

//! The `rrpc` binary against stock servers started in this test process:
//! `run` over three hosts and a dead one, `call`, `ls`, `ping`, transfers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use rrpc_server::services::{stock_root, ToolboxOptions};
use rrpc_server::{RunningServer, Server};

async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("test timed out")
}

async fn stock_server() -> RunningServer {
    let root = stock_root(&ToolboxOptions::default()).unwrap();
    Server::new(root)
        .with_shutdown_grace(Duration::from_secs(1))
        .bind("127.0.0.1:0")
        .await
        .unwrap()
        .spawn()
}

async fn rrpc(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_rrpc"))
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_spreads_twelve_commands_over_three_hosts_and_reports_a_dead_one() {
    within(60, async {
        let servers = [
            stock_server().await,
            stock_server().await,
            stock_server().await,
        ];
        let live: Vec<String> = servers.iter().map(|s| s.local_addr().to_string()).collect();
        // A dead host that accepts TCP but never answers: must not hang the run.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = silent.local_addr().unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let commands = dir.path().join("commands.txt");
        let mut list = String::from("# twelve commands\n");
        for n in 1..=12 {
            if n == 7 {
                list.push_str("echo job 7 fails; exit 3\n");
            } else {
                list.push_str(&format!(
                    "echo job {n}; echo to-stderr {n} >&2; sleep 0.3\n\n"
                ));
            }
        }
        std::fs::write(&commands, list).unwrap();
        let out_dir = dir.path().join("out");
        let hosts = format!("{},{dead},{}", live[0], live[1..].join(","));
        let started = Instant::now();
        let out = rrpc(&[
            "--connect-timeout",
            "1",
            "run",
            "--hosts",
            &hosts,
            "--parallel",
            "2",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--commands",
            commands.to_str().unwrap(),
        ])
        .await;
        let took = started.elapsed();
        let (stdout, stderr) = text(&out);
        println!("{stdout}\n{stderr}");
        assert_eq!(out.status.code(), Some(1), "one command failed");
        assert!(took < Duration::from_secs(15), "took {took:?}");

        // One output file per command, with both streams.
        for n in 1..=12 {
            let file = std::fs::read_to_string(out_dir.join(format!("output{n}.txt"))).unwrap();
            if n == 7 {
                assert_eq!(file, "job 7 fails\n");
            } else {
                assert_eq!(file, format!("job {n}\nto-stderr {n}\n"));
            }
        }
        assert_eq!(std::fs::read_dir(&out_dir).unwrap().count(), 12);

        // The summary: a row per command with its host and exit code.
        let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("echo job")).collect();
        assert_eq!(rows.len(), 12, "{stdout}");
        let mut used = BTreeSet::new();
        for (n, row) in rows.iter().enumerate() {
            let cols: Vec<&str> = row.split_whitespace().collect();
            assert_eq!(cols[0], (n + 1).to_string());
            assert!(live.contains(&cols[1].to_owned()), "{row}");
            used.insert(cols[1].to_owned());
            assert_eq!(cols[2], if n + 1 == 7 { "3" } else { "0" }, "{row}");
            assert!(cols[3].parse::<f64>().is_ok(), "{row}");
        }
        assert_eq!(used.len(), 3, "every live host took work: {used:?}");
        assert!(
            stdout.contains(&format!("unreachable host: {dead}")),
            "{stdout}"
        );
        assert!(
            stdout.contains("12 command(s), 11 ok, 1 failed, 1 host(s) unreachable"),
            "{stdout}"
        );
        assert!(stderr.contains(&dead), "{stderr}");
        drop(silent);
    })
    .await
}

#[tokio::test]
async fn run_once_per_host_and_exit_codes() {
    within(60, async {
        let a = stock_server().await;
        let b = stock_server().await;
        let dir = tempfile::tempdir().unwrap();
        let hosts = format!("{},{}", a.local_addr(), b.local_addr());
        let out_dir = dir.path().join("o");
        let out = rrpc(&[
            "run",
            "--hosts",
            &hosts,
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--",
            "echo",
            "hello",
        ])
        .await;
        assert!(out.status.success(), "{:?}", text(&out));
        for n in 1..=2 {
            assert_eq!(
                std::fs::read_to_string(out_dir.join(format!("output{n}.txt"))).unwrap(),
                "hello\n"
            );
        }
        // A command past its timeout fails the run; its file says why.
        let out = rrpc(&[
            "run",
            "--hosts",
            &a.local_addr().to_string(),
            "--timeout",
            "0.3",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--",
            "sleep 5",
        ])
        .await;
        assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
        let file = std::fs::read_to_string(out_dir.join("output1.txt")).unwrap();
        assert!(file.contains("timeout"), "{file}");
        // Every host dead: reported, non-zero, quick.
        let out = rrpc(&[
            "--connect-timeout",
            "1",
            "run",
            "--hosts",
            "127.0.0.1:1",
            "--out-dir",
            out_dir.to_str().unwrap(),
            "--",
            "true",
        ])
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(stdout.contains("unreachable host: 127.0.0.1:1"), "{stdout}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_re_runs_the_commands_of_a_host_lost_mid_run_elsewhere() {
    within(60, async {
        let doomed = stock_server().await;
        let keeper = stock_server().await;
        let (lost, kept) = (
            doomed.local_addr().to_string(),
            keeper.local_addr().to_string(),
        );
        let dir = tempfile::tempdir().unwrap();
        let commands = dir.path().join("commands.txt");
        let list: String = (1..=4)
            .map(|n| format!("sleep 1.5; echo job {n}\n"))
            .collect();
        std::fs::write(&commands, list).unwrap();
        let out_dir = dir.path().join("out");
        let hosts = format!("{lost},{kept}");
        let run = tokio::spawn(async move {
            let (out_dir, commands) = (out_dir.to_str().unwrap(), commands.to_str().unwrap());
            rrpc(&[
                "run",
                "--hosts",
                &hosts,
                "--parallel",
                "2",
                "--out-dir",
                out_dir,
                "--commands",
                commands,
            ])
            .await
        });
        // The first host takes its share, then goes away under it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        doomed.stop().await;
        let out = run.await.unwrap();
        let (stdout, stderr) = text(&out);
        println!("{stdout}\n{stderr}");
        assert_eq!(out.status.code(), Some(2), "all ran, but a host was lost");
        for n in 1..=4 {
            let file = std::fs::read_to_string(dir.path().join(format!("out/output{n}.txt")));
            assert_eq!(file.unwrap(), format!("job {n}\n"));
        }
        let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("echo job")).collect();
        assert_eq!(rows.len(), 4, "{stdout}");
        for row in rows {
            let cols: Vec<&str> = row.split_whitespace().collect();
            assert_eq!((cols[1], cols[2]), (kept.as_str(), "0"), "{row}");
        }
        assert!(
            stdout.contains(&format!("unreachable host: {lost}")),
            "{stdout}"
        );
        assert!(
            stdout.contains("4 command(s), 4 ok, 0 failed, 1 host(s) unreachable"),
            "{stdout}"
        );
        assert!(
            stderr.contains(&format!("host lost during the run: {lost}")),
            "{stderr}"
        );
    })
    .await
}

#[tokio::test]
async fn call_ls_ping_and_transfers_from_the_shell() {
    within(60, async {
        let server = stock_server().await;
        let addr = server.local_addr().to_string();
        let dir = tempfile::tempdir().unwrap();

        let out = rrpc(&["ls", &addr]).await;
        let (stdout, _) = text(&out);
        assert!(out.status.success());
        for name in [
            "fs", "proc", "sys", "script", "open", "path", "MyClass", "map",
        ] {
            assert!(stdout.contains(name), "{name} missing from {stdout}");
        }
        let out = rrpc(&["ls", &addr, "fs"]).await;
        assert!(text(&out).0.contains("listdir"));

        std::fs::write(dir.path().join("a.txt"), "x").unwrap();
        let out = rrpc(&["call", &addr, "fs.listdir", dir.path().to_str().unwrap()]).await;
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed, serde_json::json!(["a.txt"]));
        let out = rrpc(&[
            "call",
            &addr,
            "proc.run",
            "sh",
            r#"["-c", "echo $((6*7))"]"#,
        ])
        .await;
        let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(done["stdout"], "42\n");
        assert_eq!(done["exit_code"], 0);

        // Errors: a clear message and a non-zero exit.
        let out = rrpc(&["call", &addr, "fs.read", "/no/such/file"]).await;
        let (_, stderr) = text(&out);
        assert!(!out.status.success());
        assert!(
            stderr.contains("NotFound") && stderr.contains("/no/such/file"),
            "{stderr}"
        );

        let out = rrpc(&["ping", &addr, "-c", "3"]).await;
        let (stdout, _) = text(&out);
        assert!(out.status.success());
        assert!(stdout.contains("3 round trips: min"), "{stdout}");

        let local = dir.path().join("local.bin");
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&local, &data).unwrap();
        let remote = dir.path().join("remote.bin");
        let back = dir.path().join("back.bin");
        let out = rrpc(&[
            "upload",
            &addr,
            local.to_str().unwrap(),
            remote.to_str().unwrap(),
        ])
        .await;
        assert!(out.status.success(), "{:?}", text(&out));
        assert!(text(&out).0.contains("sha256"));
        let out = rrpc(&[
            "download",
            &addr,
            remote.to_str().unwrap(),
            back.to_str().unwrap(),
        ])
        .await;
        assert!(out.status.success(), "{:?}", text(&out));
        assert_eq!(std::fs::read(&back).unwrap(), data);
    })
    .await
}

#[tokio::test]
async fn the_cli_authenticates_with_a_secret_and_speaks_tls() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let certs = rrpc_server::tls::ClusterCerts::generate(&[]).unwrap();
        certs.write_to(dir.path()).unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "cli-secret\n").unwrap();
        let tls = rrpc_server::tls::TlsServer::from_pem(
            certs.server_cert.as_bytes(),
            certs.server_key.as_bytes(),
            None,
        )
        .unwrap();
        let config = rrpc_client::Config::default()
            .with_secret(rrpc_core::handshake::Secret::new("cli-secret").unwrap());
        let root = stock_root(&ToolboxOptions::default()).unwrap();
        let server = Server::new(root)
            .with_config(config)
            .with_tls(tls)
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let addr = server.local_addr().to_string();
        let ca = dir.path().join("ca.pem");
        let (ca, secret) = (ca.to_str().unwrap(), secret_file.to_str().unwrap());
        let ok = rrpc(&[
            "--tls-ca",
            ca,
            "--secret-file",
            secret,
            "call",
            &addr,
            "sys.cpu_count",
        ])
        .await;
        let (out, err) = text(&ok);
        assert!(ok.status.success(), "{out}{err}");
        assert!(out.trim().parse::<u64>().unwrap() >= 1, "{out}");
        let no_secret = rrpc(&["--tls-ca", ca, "call", &addr, "sys.cpu_count"]).await;
        let (_, err) = text(&no_secret);
        assert!(!no_secret.status.success());
        assert!(err.contains("authentication failed"), "{err}");
        let no_tls = rrpc(&["--secret-file", secret, "call", &addr, "sys.cpu_count"]).await;
        assert!(!no_tls.status.success());
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn run_connects_with_the_secret_and_tls_too() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let certs = rrpc_server::tls::ClusterCerts::generate(&[]).unwrap();
        certs.write_to(dir.path()).unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, "run-secret\n").unwrap();
        let tls = rrpc_server::tls::TlsServer::from_pem(
            certs.server_cert.as_bytes(),
            certs.server_key.as_bytes(),
            None,
        )
        .unwrap();
        let config = rrpc_client::Config::default()
            .with_secret(rrpc_core::handshake::Secret::new("run-secret").unwrap());
        let server = Server::new(stock_root(&ToolboxOptions::default()).unwrap())
            .with_config(config)
            .with_tls(tls)
            .bind("127.0.0.1:0")
            .await
            .unwrap()
            .spawn();
        let addr = server.local_addr().to_string();
        let ca = dir.path().join("ca.pem");
        let out_dir = dir.path().join("out");
        let (ca, secret, out) = (
            ca.to_str().unwrap(),
            secret_file.to_str().unwrap(),
            out_dir.to_str().unwrap(),
        );
        let ok = rrpc(&[
            "--tls-ca",
            ca,
            "--secret-file",
            secret,
            "run",
            "--hosts",
            &addr,
            "--out-dir",
            out,
            "--",
            "echo",
            "secure",
        ])
        .await;
        assert!(ok.status.success(), "{:?}", text(&ok));
        assert_eq!(
            std::fs::read_to_string(out_dir.join("output1.txt")).unwrap(),
            "secure\n"
        );
        // Without the secret the host is unreachable: reported, exit 1.
        let refused = rrpc(&[
            "--tls-ca",
            ca,
            "run",
            "--hosts",
            &addr,
            "--out-dir",
            out,
            "--",
            "true",
        ])
        .await;
        let (stdout, stderr) = text(&refused);
        assert_eq!(refused.status.code(), Some(1), "{stdout}{stderr}");
        assert!(stderr.contains("authentication failed"), "{stderr}");
        assert!(
            stdout.contains(&format!("unreachable host: {addr}")),
            "{stdout}"
        );
        server.stop().await;
    })
    .await
}

/// `rrpc run` without `--timeout` lets a command run past the connection's
/// default call deadline (`--call-timeout`, 1 s here instead of 30 s), and
/// `--timeout` longer than it is honoured too.
#[tokio::test]
async fn run_outlives_the_default_call_deadline() {
    within(60, async {
        let server = stock_server().await;
        let host = server.local_addr().to_string();
        for timeout in [None, Some("10")] {
            let dir = tempfile::tempdir().unwrap();
            let out_dir = dir.path().join("out");
            let mut args = vec![
                "--call-timeout",
                "1",
                "run",
                "--hosts",
                &host,
                "--out-dir",
                out_dir.to_str().unwrap(),
            ];
            if let Some(t) = timeout {
                args.extend(["--timeout", t]);
            }
            args.extend(["--", "sleep 2.5; echo slept"]);
            let out = rrpc(&args).await;
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{timeout:?}: {stdout}\n{stderr}");
            let file = std::fs::read_to_string(out_dir.join("output1.txt")).unwrap();
            assert_eq!(file, "slept\n");
        }
    })
    .await;
}

/// Malformed JSON is refused with what is wrong, not sent as a string.
#[tokio::test]
async fn call_refuses_malformed_json() {
    within(30, async {
        let server = stock_server().await;
        let addr = server.local_addr().to_string();
        let out = rrpc(&["call", &addr, "fs.listdir", "[\"/tmp\""]).await;
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{stdout}");
        assert!(stderr.contains("is not valid JSON"), "{stderr}");
        assert!(!stderr.contains("alloc::"), "{stderr}");
    })
    .await;
}

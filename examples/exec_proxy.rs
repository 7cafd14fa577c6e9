//! Batchlib's exec_proxy session (from the Russian survey), replayed against
//! the stock `rrpc-server`'s toolbox: list the remote home directory, make a
//! temporary directory, upload a file, run a command on it, download the
//! result, clean up — each step an exec_proxy call, errors reported clearly.
//!
//! ```text
//! cargo run --release --example exec_proxy                   # in-process server
//! cargo run --release --example exec_proxy -- --connect ADDR # a running rrpc-server
//! ```

use std::io::Write;

use anyhow::{bail, ensure, Context, Result};
use rrpc_client::transfer::{self, TransferOptions};
use rrpc_client::{ErrorKind, Value};
use rrpc_server::services::{stock_root, ToolboxOptions};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut connect = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--connect" => connect = Some(args.next().context("--connect needs ADDR")?),
            "-h" | "--help" => {
                println!("usage: exec_proxy [--connect HOST:PORT]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    // By default the slave server runs in-process, on a free loopback port.
    let (addr, _server) = match connect {
        Some(addr) => (addr, None),
        None => {
            let root = stock_root(&ToolboxOptions::default())?;
            let server = rrpc_server::Server::new(root)
                .bind("127.0.0.1:0")
                .await?
                .spawn();
            println!(
                "(stock rrpc-server running in-process on {})",
                server.local_addr()
            );
            (server.local_addr().to_string(), Some(server))
        }
    };

    step(&format!("ep = Exec_proxy({addr:?})"));
    let ep = rrpc_client::connect(addr.as_str()).await?;
    let root = ep.root();
    let fs = root.get("fs").await?.into_proxy()?;
    let proc = root.get("proc").await?.into_proxy()?;
    let sys = root.get("sys").await?.into_proxy()?;

    step("print ep.listdir('~')   # the remote user's home directory");
    let env = sys.get("env").await?.into_proxy()?;
    let home = env.call("get", ("HOME", "/")).await?;
    let home = home.as_str().unwrap_or("/").to_owned();
    let listing: Vec<String> = fs.call("listdir", (home.as_str(),)).await?.decode()?;
    println!(
        "  {home}: {} entries {:?}",
        listing.len(),
        &listing[..listing.len().min(8)]
    );

    step("d = ep.newdir(); ep.chdir(d)");
    let dir: String = fs.call("tempdir", ("exec-proxy-",)).await?.decode()?;
    fs.call("chdir", (dir.as_str(),)).await?;
    println!("  -> {}", fs.call("getcwd", ()).await?);

    step("ep.upload('words.txt', d + '/words.txt')   # streamed, SHA-256 checked");
    let local_dir = tempdir()?;
    let words = local_dir.join("words.txt");
    std::fs::write(&words, WORDS)?;
    let remote = format!("{dir}/words.txt");
    let opts = TransferOptions::default();
    let sent = transfer::upload_file(&fs, &words, &remote, &opts).await?;
    println!("  {} bytes, sha256 {}", sent.bytes, &sent.sha256[..16]);

    step("ep.stat('words.txt'); ep.chmod('words.txt', 0o600); ep.symlink('words.txt', 'w')");
    let st = fs.call("stat", ("words.txt",)).await?;
    println!(
        "  size {:?}, mode {:o}",
        st.get("size"),
        st.get("mode").and_then(Value::as_i64).unwrap_or(0)
    );
    fs.call("chmod", ("words.txt", 0o600)).await?;
    fs.call("symlink", ("words.txt", "w")).await?;
    fs.call("mkfifo", ("pipe",)).await?;
    println!("  entries now {:?}", fs.call("listdir", ()).await?);

    step("ep.run('sort -u w | wc -l > count.txt; sort -u w > sorted.txt')");
    let done = proc
        .call(
            "run",
            (
                "sh",
                vec![
                    "-c",
                    "sort -u w | wc -l > count.txt && sort -u w > sorted.txt",
                ],
                (),
                (),
                30.0,
            ),
        )
        .await?;
    println!(
        "  exit code {:?} in {:.3} s",
        done.get("exit_code"),
        done.get("duration").and_then(Value::as_f64).unwrap_or(0.0)
    );
    ensure!(
        done.get("exit_code").and_then(Value::as_i64) == Some(0),
        "the command failed: {done:?}"
    );

    step("ep.read('count.txt'); ep.download('sorted.txt', 'sorted.txt')");
    let count = fs.call("read", ("count.txt",)).await?;
    println!("  distinct words: {}", count.as_str().unwrap_or("?").trim());
    let sorted_local = local_dir.join("sorted.txt");
    let got =
        transfer::download_file(&fs, &format!("{dir}/sorted.txt"), &sorted_local, &opts).await?;
    let sorted = std::fs::read_to_string(&sorted_local)?;
    let mut expected: Vec<&str> = WORDS.lines().collect();
    expected.sort();
    expected.dedup();
    ensure!(
        sorted.lines().collect::<Vec<_>>() == expected,
        "the download differs"
    );
    println!("  {} bytes back, sha256 {}", got.bytes, &got.sha256[..16]);

    step("ep.run('false'); ep.is_ok(); ep.get_error()   # errors are reported, not fatal");
    let failed = proc
        .call("run", ("sh", vec!["-c", "echo no such thing >&2; exit 2"]))
        .await?;
    println!(
        "  exit code {:?}, stderr {:?}",
        failed.get("exit_code"),
        failed.get("stderr")
    );
    match fs.call("read", ("missing.txt",)).await {
        Err(e) if e.remote_kind() == Some(&ErrorKind::NotFound) => println!(
            "  error: {}",
            e.remote().map_or(String::new(), |r| r.message.clone())
        ),
        other => bail!("expected NotFound, got {other:?}"),
    }

    step("ep.unlink(...); ep.chdir('..'); ep.rmdir(d)   # clean up");
    for name in ["w", "pipe", "words.txt", "count.txt", "sorted.txt"] {
        fs.call("remove", (name,)).await?;
    }
    fs.call("chdir", ("..",)).await?;
    fs.call("rmdir", (dir.as_str(),)).await?;
    ensure!(
        !fs.call("exists", (dir.as_str(),))
            .await?
            .as_bool()
            .unwrap_or(true),
        "the directory is still there"
    );
    std::fs::remove_dir_all(&local_dir).ok();
    ep.close();
    println!("\nThe exec_proxy session ran against the stock server's toolbox.");
    Ok(())
}

fn step(what: &str) {
    println!(">>> {what}");
    let _ = std::io::stdout().flush();
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("rrpc-exec-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

const WORDS: &str = "cluster\nnode\nssh\nrpyc\nnode\nbatch\nqueue\ncluster\nproxy\nexec\n";

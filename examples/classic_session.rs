//! The "cluster on your knee" RPyC session of the LXF article, replayed with
//! rrpc's blocking API, step by step.
//!
//! ```text
//! cargo run --release --example classic_session                  # in-process server
//! cargo run --release --example classic_session -- --connect ADDR # a running rrpc-server
//! ```

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rrpc_client::{Function, Value};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut connect = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--connect" => connect = Some(args.next().context("--connect needs ADDR")?),
            "-h" | "--help" => {
                println!("usage: classic_session [--connect HOST:PORT]");
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    // By default the slave server runs in-process, on a free loopback port.
    let (addr, _server) = match connect {
        Some(addr) => (addr, None),
        None => {
            let server = InProcessServer::start()?;
            (server.addr.clone(), Some(server))
        }
    };

    step(&format!("gandalf = connect({addr:?})"));
    let gandalf = rrpc_client::blocking::connect(addr.as_str())?;
    let root = gandalf.root();

    // The article opens with the classic service's execute/eval.
    step("gandalf.execute('n=2')");
    let script = root.get("script").wait()?.into_proxy()?;
    script.call("execute", ("n=2",)).wait()?;
    step("gandalf.eval('n+1')");
    let three = script.call("eval", ("n+1",)).wait()?;
    println!("  -> {three}");
    ensure!(three.as_i64() == Some(3), "eval('n+1') should be 3");

    // A file to open remotely: the article reads mymodule.py.
    let dir = std::env::temp_dir().join(format!("rrpc-classic-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let module = dir.join("mymodule.py");
    std::fs::write(&module, MYMODULE)?;

    step(&format!(
        "gandalf_file = gandalf.open({:?})",
        module.display()
    ));
    let gandalf_file = root
        .call("open", (module.display().to_string(),))
        .wait()?
        .into_proxy()?;
    println!("  -> {gandalf_file:?}");
    step("print(gandalf_file.read())");
    let text = gandalf_file.call("read", ()).wait()?;
    print!("{text}");
    ensure!(
        text.as_str() == Some(MYMODULE),
        "the remote read returned other text"
    );
    step("gandalf_file.close()");
    gandalf_file.call("close", ()).wait()?;

    step("gandalf_path = gandalf.path; gandalf_path.append('/home/grozin/rpyc')");
    let gandalf_path = root.get("path").wait()?.into_proxy()?;
    gandalf_path.call("append", ("/home/grozin/rpyc",)).wait()?;
    let seen = root
        .get("path")
        .wait()?
        .into_proxy()?
        .call("list", ())
        .wait()?;
    println!("  the server's path is now {seen:?}");
    ensure!(
        matches!(&seen, Value::List(items) if items.iter().any(|v| v.as_str() == Some("/home/grozin/rpyc"))),
        "the append was not seen by the server"
    );

    step("gandalf_object = gandalf.MyClass(0); gandalf_object.f(3)");
    let gandalf_object = root.call("MyClass", (0,)).wait()?.into_proxy()?;
    let four = gandalf_object.call("f", (3,)).wait()?;
    println!("  -> {four}");
    ensure!(four.as_i64() == Some(4), "f(3) should be 4");

    step("gandalf_object.t = 2; gandalf_object.f(4)");
    gandalf_object.set("t", 2).wait()?;
    let started = Instant::now();
    let five = gandalf_object.call("f", (4,)).wait()?;
    println!("  -> {five} after {:.1} s", started.elapsed().as_secs_f64());
    ensure!(five.as_i64() == Some(5), "f(4) should be 5");

    step("def loc(n): print('loc', n); return n + 1");
    let loc = Function::blocking("loc", |mut args| {
        let n: i64 = args.take(0, "n")?;
        println!("loc {n}");
        Ok(n + 1)
    });
    step("list(gandalf.map(loc, [1, 2, 3]))");
    let mapped = root.call("map", (loc.into_value(), vec![1, 2, 3])).wait()?;
    println!("  -> {mapped:?}");
    ensure!(
        mapped.decode::<Vec<i64>>()? == vec![2, 3, 4],
        "map should give [2, 3, 4]"
    );

    // The article waits 10 s; one second shows the same thing.
    step("gandalf_object.t = 1; res = async(gandalf_object.f)(1)");
    gandalf_object.set("t", 1).wait()?;
    let res = gandalf_object.call_async("f", (1,));
    println!("  res.ready -> {}", res.ready());
    ensure!(!res.ready(), "the result cannot be ready at once");
    res.wait(Duration::from_secs(10));
    println!("  # one second later");
    println!("  res.ready -> {}", res.ready());
    let value = res.value()?;
    println!("  res.value -> {value}");
    ensure!(value.as_i64() == Some(2), "value should be 2");

    step("res = async_f(2); res.value   # blocks until ready");
    let value = gandalf_object.call_async("f", (2,)).value()?;
    println!("  -> {value}");
    ensure!(value.as_i64() == Some(3), "value should be 3");

    step("bgsrv = BgServingThread(gandalf); res = async_f(3); res.add_callback(callback)");
    let bgsrv = gandalf.bg_serving();
    let (fired, got) = mpsc::channel();
    let res = gandalf_object.call_async("f", (3,));
    res.add_callback(move |res| {
        let thread = std::thread::current();
        println!(
            "  callback on thread {:?}: {}",
            thread.name().unwrap_or("unnamed"),
            res.value()
                .map(|v| v.to_string())
                .unwrap_or_else(|e| e.to_string())
        );
        let _ = fired.send(res.value().ok().and_then(|v| v.as_i64()));
    });
    println!("  # carrying on with other things...");
    let from_callback = got
        .recv_timeout(Duration::from_secs(10))
        .context("the callback never fired")?;
    ensure!(from_callback == Some(4), "the callback should see 4");
    step("bgsrv.stop()");
    bgsrv.stop();
    println!("  serving the server's requests: {}", bgsrv.is_running());

    step("gandalf.close()");
    gandalf.close();
    std::fs::remove_dir_all(&dir).ok();
    println!("\nThe whole session ran as in the article.");
    Ok(())
}

fn step(what: &str) {
    println!(">>> {what}");
    let _ = std::io::stdout().flush();
}

const MYMODULE: &str = "#!/usr/bin/env python
from time import sleep
class MyClass:
   def __init__(self,t):
      self.t=t
   def f(self,n):
      sleep(self.t)
      return n+1
";

/// The stock server's objects, served in-process on a free loopback port
/// until this is dropped (its runtime owns the server task).
struct InProcessServer {
    addr: String,
    _runtime: tokio::runtime::Runtime,
}

impl InProcessServer {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Runtime::new()?;
        let listening = runtime.block_on(
            rrpc_server::Server::new(rrpc_server::services::stock_root(
                &rrpc_server::services::ToolboxOptions::default(),
            )?)
            .bind("127.0.0.1:0"),
        )?;
        let addr = listening.local_addr().to_string();
        runtime.spawn(listening.serve());
        println!("(slave server running in-process on {addr})");
        Ok(InProcessServer {
            addr,
            _runtime: runtime,
        })
    }
}

//! The node agent driven remotely over rrpc: a real agent server on
//! 127.0.0.1:0, the real rrpc client, real QEMU running the tiny guest.
//! Needs `scripts/install-qemu.sh` and `scripts/build-test-guest.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rrpc_client::{from_value, to_value, Connection, ErrorKind, Function, Proxy, Value};
use rrpc_server::RunningServer;
use tokio::sync::mpsc;
use vmctl::agent::report::{
    EndReport, How, PlanReport, ResourcesReport, StateEvent, VmInfo, VmStatus,
};
use vmctl::agent::{serve, AgentConfig, LaunchSpec, NodeAgent};
use vmctl::net::VmAddress;
use vmctl::plan::NodeResources;

/// A long call (boot, power-down) gets more than the default 30 s deadline.
const LONG_CALL: Duration = Duration::from_secs(120);

struct Agent {
    node: Arc<NodeAgent>,
    server: RunningServer,
    conn: Connection,
    proxy: Proxy,
}

async fn start_agent(block: u32, resources: Option<NodeResources>) -> Agent {
    let mut config = AgentConfig::new(block).guest_dir(guest_dir());
    config.resources = resources;
    let node = Arc::new(NodeAgent::new(config).unwrap());
    let listening = serve::bind(Arc::clone(&node), "127.0.0.1:0").await.unwrap();
    let addr = listening.local_addr();
    let server = listening.spawn();
    let conn = rrpc_client::connect(addr).await.unwrap();
    let proxy = conn.root().get("node").await.unwrap().into_proxy().unwrap();
    Agent {
        node,
        server,
        conn,
        proxy,
    }
}

/// A client callback that forwards every state event to a channel.
fn recorder() -> (Value, mpsc::UnboundedReceiver<StateEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let f = Function::from_async("on_state", move |_cx, mut args| {
        let tx = tx.clone();
        async move {
            let event: StateEvent = args.take(0, "event")?;
            let _ = tx.send(event);
            Ok(())
        }
    });
    (f.into_value(), rx)
}

async fn next_final(
    rx: &mut mpsc::UnboundedReceiver<StateEvent>,
    seen: &mut Vec<String>,
) -> StateEvent {
    loop {
        let ev = rx
            .recv()
            .await
            .expect("the subscription ended without a final event");
        seen.push(ev.state.clone());
        if ev.ended {
            return ev;
        }
    }
}

#[tokio::test]
async fn launch_through_the_agent_boots_to_ready_and_powers_down_gracefully() {
    init_tracing();
    let work = async {
        let a = start_agent(3, None).await;
        let node = &a.proxy;

        let res: ResourcesReport = from_value(node.call("resources", ()).await.unwrap()).unwrap();
        assert_eq!(res.block, 3);
        assert!(res.cpus >= 1 && res.usable_mib < res.memory_mib, "{res:?}");
        let size = to_value(&serde_json_map("vm_cpus", 1)).unwrap();
        let plan: PlanReport = from_value(node.call("plan", (size, 0.2)).await.unwrap()).unwrap();
        assert_eq!(plan.vms, res.cpus);
        assert!(plan.explain.contains("20"), "{}", plan.explain);

        let t0 = Instant::now();
        let spec = to_value(&LaunchSpec {
            memory_mib: Some(128),
            ..LaunchSpec::default()
        })
        .unwrap();
        let vm = node
            .call("launch", (spec,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let (callback, mut events) = recorder();
        vm.call("subscribe", (callback,)).await.unwrap();

        let info: VmInfo = from_value(
            vm.call("wait_ready", (90.0,))
                .timeout(LONG_CALL)
                .await
                .unwrap(),
        )
        .unwrap();
        let boot = t0.elapsed();
        let addr = VmAddress::new(3, 0).unwrap();
        assert_eq!(info.state, "ready");
        assert_eq!(info.mac, addr.mac().to_string());
        assert_eq!(info.ip, addr.ip().to_string());
        assert!(info.seconds_to_ready.is_some(), "{info:?}");
        let console: String = from_value(vm.call("console_tail", ()).await.unwrap()).unwrap();
        let expected = format!("GUEST-READY mac={} ip={}", addr.mac(), addr.ip());
        assert!(console.contains(&expected), "{console}");

        // The same VM comes back as the same proxy.
        let listed = node.call("list", ()).await.unwrap();
        let Value::List(listed) = listed else {
            panic!("list() is not a list")
        };
        assert_eq!(listed.len(), 1);
        assert!(listed[0].as_proxy().unwrap().same_object(&vm));

        let status: VmStatus = from_value(vm.call("status", ()).await.unwrap()).unwrap();
        assert_eq!(status.qmp_status.as_deref(), Some("running"));
        assert!(!status.ended);

        let t1 = Instant::now();
        let end: EndReport = from_value(
            vm.call("powerdown", (30.0,))
                .timeout(LONG_CALL)
                .await
                .unwrap(),
        )
        .unwrap();
        let down = t1.elapsed();
        assert_eq!(end.how, How::Graceful, "{end:?}");
        assert!(end.detail.contains("guest-shutdown"), "{end:?}");

        let status: VmStatus = from_value(vm.call("wait", (10.0,)).await.unwrap()).unwrap();
        assert!(status.ended);
        assert_eq!(status.how, Some(How::Graceful));
        let mut seen = Vec::new();
        let last =
            tokio::time::timeout(Duration::from_secs(10), next_final(&mut events, &mut seen))
                .await
                .expect("no final state event");
        assert_eq!(last.state, "stopped", "{last:?}");
        assert!(seen.contains(&"ready".to_owned()), "{seen:?}");
        let res: ResourcesReport = from_value(node.call("resources", ()).await.unwrap()).unwrap();
        assert_eq!((res.live_vms, res.memory_in_use_mib), (0, 0));
        eprintln!(
            "MEASURED agent boot_to_ready_ms={} (vm says {:.2}s) powerdown_ms={} (vm says {:.3}s)",
            boot.as_millis(),
            info.seconds_to_ready.unwrap_or_default(),
            down.as_millis(),
            end.seconds.unwrap_or_default()
        );
        a.conn.close();
        a.server.stop().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

#[tokio::test]
async fn sigkill_of_qemu_reaches_a_subscribed_client_callback_as_crashed() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    init_tracing();
    let work = async {
        let a = start_agent(4, None).await;
        let vm = a
            .proxy
            .call("launch", ())
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let info: VmInfo = from_value(
            vm.call("wait_ready", (90.0,))
                .timeout(LONG_CALL)
                .await
                .unwrap(),
        )
        .unwrap();
        let (callback, mut events) = recorder();
        vm.call("subscribe", (callback,)).await.unwrap();
        let first = events.recv().await.unwrap();
        assert_eq!(first.state, "ready", "the current state comes first");

        let pid = i32::try_from(info.pid.unwrap()).unwrap();
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();

        let mut seen = Vec::new();
        let ev = tokio::time::timeout(Duration::from_secs(20), next_final(&mut events, &mut seen))
            .await
            .expect("no crash event");
        assert_eq!(ev.state, "crashed", "{ev:?}");
        assert!(ev.detail.contains("signal 9"), "{ev:?}");
        assert!(ev.console_tail.unwrap_or_default().contains("GUEST-READY"));
        // The subscription task has ended; a power-down reports the crash.
        let end: EndReport = from_value(vm.call("powerdown", (5.0,)).await.unwrap()).unwrap();
        assert_eq!(end.how, How::Crashed, "{end:?}");
        a.conn.close();
        a.server.stop().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

#[tokio::test]
async fn dropping_the_agent_kills_its_vms_and_old_proxies_get_a_clear_error() {
    init_tracing();
    let work = async {
        let a = start_agent(5, None).await;
        // No need to wait for the guest: QMP answering is enough.
        let vm = a
            .proxy
            .call("launch", ())
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let info: VmInfo = from_value(vm.call("info", ()).await.unwrap()).unwrap();
        let pid = info.pid.unwrap();
        assert!(alive(pid));

        // The agent forgets its VMs (what dropping it does) while the client
        // still holds a proxy.
        a.node.kill_all_now();
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(pid), "QEMU {pid} survived its agent");
        let err = vm.call("info", ()).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::NotFound), "{err}");
        assert!(err.to_string().contains("no longer managed"), "{err}");
        a.conn.close();
        a.server.stop().await;
        drop(a.node);
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

#[tokio::test]
async fn bad_launch_requests_are_refused_with_clear_errors() {
    init_tracing();
    let work = async {
        let small = NodeResources {
            cpus: 2,
            memory_mib: 1000,
        };
        let a = start_agent(6, Some(small)).await;
        let node = &a.proxy;
        let launch = |spec: LaunchSpec| node.call("launch", (to_value(&spec).unwrap(),));

        let err = launch(LaunchSpec {
            memory_mib: Some(900),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::Refused), "{err}");
        assert!(err.to_string().contains("not enough memory"), "{err}");

        let err = launch(LaunchSpec {
            image: Some("relative.raw".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("must be absolute"), "{err}");

        let err = node
            .call(
                "launch",
                (Value::Map(vec![("colour".into(), "blue".into())]),),
            )
            .await
            .unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::BadArgument), "{err}");
        assert!(err.to_string().contains("colour"), "{err}");

        let err = node.call("plan", ("many",)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::BadArgument), "{err}");
        let err = node.call("power_down_all", (-1.0,)).await.unwrap_err();
        assert_eq!(err.remote_kind(), Some(&ErrorKind::BadArgument), "{err}");

        // A failed launch gives its memory back.
        let res: ResourcesReport = from_value(node.call("resources", ()).await.unwrap()).unwrap();
        assert_eq!((res.live_vms, res.memory_in_use_mib), (0, 0));
        a.conn.close();
        a.server.stop().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

/// A client that stops waiting (its call deadline) does not stop the
/// escalation: a VM with no OS ignores the power button and is still taken
/// to `quit` by the agent.
#[tokio::test]
async fn a_power_down_goes_on_when_the_caller_stops_waiting() {
    init_tracing();
    let work = async {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("blank.raw");
        std::fs::write(&image, vec![0u8; 1024 * 1024]).unwrap();
        let a = start_agent(12, None).await;
        let spec = to_value(&LaunchSpec {
            image: Some(image),
            network: Some("none".into()),
            ..LaunchSpec::default()
        })
        .unwrap();
        let vm = a
            .proxy
            .call("launch", (spec,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let err = vm
            .call("powerdown", (1.0,))
            .timeout(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        let status: VmStatus = from_value(
            vm.call("wait", (20.0,))
                .timeout(Duration::from_secs(30))
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(status.ended, "{status:?}");
        assert_eq!(status.how, Some(How::Quit), "{status:?}");
        a.conn.close();
        a.server.stop().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

fn serde_json_map(key: &str, value: u32) -> std::collections::BTreeMap<String, u32> {
    std::collections::BTreeMap::from([(key.to_owned(), value)])
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

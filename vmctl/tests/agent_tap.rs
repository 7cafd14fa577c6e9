//! The real cluster network set-up end to end, inside a network namespace
//! this test creates (and deletes, even on failure): the agent launches a VM
//! with network `tap`, sets up its tap, gateway and host route, the guest
//! configures itself from its MAC and answers pings from the node, and the
//! tap goes away when the VM is powered down. QEMU runs in the namespace
//! through a two-line wrapper given as `VMCTL_QEMU`. Needs root, `ip`,
//! busybox, and `scripts/install-qemu.sh` / `scripts/build-test-guest.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rrpc_client::{from_value, to_value};
use vmctl::agent::report::{EndReport, How, VmInfo};
use vmctl::agent::{serve, AgentConfig, LaunchSpec, NodeAgent, DEFAULT_APPEND};
use vmctl::tapnet::ip_forwarding;

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("vmctl-agt-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("cannot run `ip netns add`")
            .success();
        assert!(ok, "`ip netns add {name}` failed (root needed)");
        let ns = Netns(name);
        assert!(ns.exec(&["ip", "link", "set", "lo", "up"]).status.success());
        ns
    }

    fn exec(&self, argv: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
async fn a_tap_vm_is_routed_from_the_node_and_its_tap_goes_with_it() {
    init_tracing();
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("qemu-in-netns");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ip netns exec {} qemu-system-x86_64 \"$@\"\n",
            ns.0
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The only test in this binary: nothing else reads the variable.
    std::env::set_var(vmctl::qemu::QEMU_ENV, &wrapper);

    let work = async {
        let mut config = AgentConfig::new(21).guest_dir(guest_dir());
        config.tap_netns = Some(ns.0.clone());
        let node = Arc::new(NodeAgent::new(config).unwrap());
        let listening = serve::bind(Arc::clone(&node), "127.0.0.1:0").await.unwrap();
        let server = listening.spawn();
        let conn = rrpc_client::connect(server.local_addr()).await.unwrap();
        let agent = conn.root().get("node").await.unwrap().into_proxy().unwrap();

        let spec = to_value(&LaunchSpec {
            network: Some("tap".into()),
            append: Some(format!("{DEFAULT_APPEND} ipfrommac=1")),
            ..LaunchSpec::default()
        })
        .unwrap();
        let vm = agent
            .call("launch", (spec,))
            .await
            .unwrap()
            .into_proxy()
            .unwrap();
        let info: VmInfo = from_value(
            vm.call("wait_ready", (90.0,))
                .timeout(Duration::from_secs(100))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(info.ip, "10.200.21.2");

        let route = ns.exec(&["ip", "route", "show", "10.200.21.2/32"]);
        let route = String::from_utf8_lossy(&route.stdout);
        assert!(route.contains("dev vmt21-0"), "{route}");
        assert!(ip_forwarding(Some(&ns.0)).await.unwrap());
        let ping = ns.exec(&["busybox", "ping", "-c", "3", "-W", "2", "10.200.21.2"]);
        let said = String::from_utf8_lossy(&ping.stdout);
        assert!(ping.status.success(), "the guest does not answer:\n{said}");
        assert!(said.contains("bytes from 10.200.21.2"), "{said}");

        let end: EndReport = from_value(
            vm.call("powerdown", (30.0,))
                .timeout(Duration::from_secs(60))
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(end.how, How::Graceful, "{end:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let links = ns.exec(&["ip", "link", "show"]);
            let links = String::from_utf8_lossy(&links.stdout).into_owned();
            if !links.contains("vmt21-0") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the tap outlived its VM:\n{links}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let routes = ns.exec(&["ip", "route", "show"]);
        assert!(!String::from_utf8_lossy(&routes.stdout).contains("10.200.21.2"));
        conn.close();
        server.stop().await;
    };
    tokio::time::timeout(TEST_TIMEOUT, work).await.unwrap();
}

//! The tap helper for real, inside a network namespace this test creates
//! (and deletes at the end, even when an assertion fails). Needs root and the
//! `ip` command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use vmctl::net::VmAddress;
use vmctl::tapnet::{ip_forwarding, Tap, TapConfig};

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("vmctl-tap-{}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("cannot run `ip netns add` (is iproute2 installed?)");
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed (root needed): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[tokio::test]
async fn tap_route_and_forwarding_are_set_up_and_torn_down_in_a_netns() {
    let ns = Netns::new();
    let work = async {
        assert!(
            !ip_forwarding(Some(&ns.0)).await.unwrap(),
            "a new netns forwards nothing"
        );
        let addr = VmAddress::new(1, 3).unwrap();
        let config = TapConfig::for_mac("tapvm3", &addr.mac())
            .unwrap()
            .in_netns(ns.0.clone());
        let tap = Tap::create(config).await.unwrap();
        assert!(tap.created());

        let link = ns.ip(&["-d", "link", "show", "dev", "tapvm3"]);
        assert!(link.contains("tun type tap"), "{link}");
        assert!(link.contains("UP"), "{link}");
        let route = ns.ip(&["route", "show", "10.200.1.5/32"]);
        assert!(route.contains("10.200.1.5 dev tapvm3"), "{route}");
        let addrs = ns.ip(&["addr", "show", "dev", "tapvm3"]);
        assert!(
            addrs.contains("10.200.1.1/32"),
            "gateway on the tap: {addrs}"
        );
        assert!(ip_forwarding(Some(&ns.0)).await.unwrap());

        // Again for the same device: reused, not created, route still right.
        let again = Tap::create(
            TapConfig::for_mac("tapvm3", &addr.mac())
                .unwrap()
                .in_netns(ns.0.clone()),
        )
        .await
        .unwrap();
        assert!(!again.created());

        tap.teardown().await.unwrap();
        let links = ns.ip(&["link", "show"]);
        assert!(!links.contains("tapvm3"), "{links}");
        let routes = ns.ip(&["route", "show"]);
        assert!(!routes.contains("10.200.1.5"), "{routes}");

        // A failing step names the command.
        let bad = Tap::create(
            TapConfig::for_mac("tapvm4", &addr.mac())
                .unwrap()
                .in_netns("vmctl-no-such-netns"),
        )
        .await
        .unwrap_err();
        assert!(
            bad.to_string()
                .contains("ip netns exec vmctl-no-such-netns"),
            "{bad}"
        );
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .unwrap();
}

//! Tap networking for the real cluster set-up (root only): the article's
//! network script as code.
//!
//! The article gives every VM a tap device on its node, routes the VM's
//! address (derived from its MAC, see [`crate::net`]) to that tap as a host
//! route, and turns on IPv4 forwarding so that the node routes between its
//! VMs and the outside:
//!
//! ```text
//! tunctl -u root -t $itf; ifconfig $itf 0.0.0.0 up
//! route add -net 172.16.$block.$vm netmask 255.255.255.255 dev $itf
//! sysctl -w net.ipv4.conf.$external.forwarding=1
//! sysctl -w net.ipv4.conf.$itf.forwarding=1
//! ```
//!
//! [`Tap::create`] does the same with the `ip` and `sysctl` commands:
//!
//! 1. `ip tuntap add dev ITF mode tap` (an existing device is reused, and then
//!    not deleted by teardown),
//! 2. `ip addr replace GW/32 dev ITF` — the VM's gateway (`.1` of its block)
//!    on the tap, so that the host answers the guest's ARP for its gateway,
//! 3. `ip link set dev ITF up`,
//! 4. `ip route replace VM_IP/32 dev ITF` — the host route to the VM,
//! 5. `sysctl -w net.ipv4.ip_forward=1` and
//!    `net/ipv4/conf/ITF/forwarding=1` (plus the external interface's, if
//!    named; the slash form keeps names with dots intact).
//!
//! [`Tap::teardown`] removes the route and the device it created. Forwarding
//! stays on: other VMs of the node still need it.
//!
//! Every command can run inside a network namespace (`ip netns exec NS …`),
//! which is how the tests exercise this without touching the host's network.
//! QEMU then attaches to the device with [`crate::qemu::Network::Tap`]
//! (`script=no,downscript=no`).

use std::net::Ipv4Addr;
use std::process::Stdio;

use crate::net::{Mac, NetError};

/// Errors of the tap helper; each names the command that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapError {
    /// A bad interface name or address.
    #[error("invalid tap set-up: {0}")]
    Invalid(String),
    /// The MAC is not one vmctl hands out.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// What to set up for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapConfig {
    /// The tap device's name (1–15 bytes, no `/`, no spaces).
    pub ifname: String,
    /// The VM's address: the host route points here.
    pub vm_ip: Ipv4Addr,
    /// The gateway the guest uses (`.1` of its `/24`); put on the tap as a
    /// `/32` when set.
    pub gateway: Option<Ipv4Addr>,
    /// The node's external interface, whose forwarding is turned on too.
    pub external: Option<String>,
    /// Run every command in this network namespace (`ip netns exec NS`).
    pub netns: Option<String>,
}

impl TapConfig {
    /// The set-up for the VM with this MAC: route to the IP derived from it,
    /// gateway `.1` of its block.
    pub fn for_mac(ifname: impl Into<String>, mac: &Mac) -> Result<Self, TapError> {
        let ip = mac.derived_ip()?;
        let o = ip.octets();
        Ok(Self {
            ifname: ifname.into(),
            vm_ip: ip,
            gateway: Some(Ipv4Addr::new(o[0], o[1], o[2], 1)),
            external: None,
            netns: None,
        })
    }

    /// Runs the commands inside network namespace `netns`.
    pub fn in_netns(mut self, netns: impl Into<String>) -> Self {
        self.netns = Some(netns.into());
        self
    }

    /// Also enables forwarding on the external interface `ifname`.
    pub fn external(mut self, ifname: impl Into<String>) -> Self {
        self.external = Some(ifname.into());
        self
    }

    fn validate(&self) -> Result<(), TapError> {
        check_ifname(&self.ifname)?;
        if let Some(ext) = &self.external {
            check_ifname(ext)?;
        }
        if let Some(ns) = &self.netns {
            let ok = !ns.is_empty()
                && ns.len() <= 64
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !ns.starts_with('.');
            if !ok {
                return Err(TapError::Invalid(format!("bad network namespace {ns:?}")));
            }
        }
        Ok(())
    }
}

fn check_ifname(name: &str) -> Result<(), TapError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(TapError::Invalid(format!(
            "bad interface name {name:?} (1-15 of [A-Za-z0-9-_.])"
        )))
    }
}

/// A tap device set up for one VM. Call [`Tap::teardown`] when the VM is
/// gone; dropping it without does nothing (a namespace's deletion, or the
/// next start, cleans up).
#[derive(Debug)]
#[must_use = "a tap is torn down with Tap::teardown"]
pub struct Tap {
    config: TapConfig,
    created: bool,
}

impl Tap {
    /// Creates (or reuses) the tap device, routes the VM's address to it and
    /// turns forwarding on. If a step fails, what was done is undone.
    #[tracing::instrument(skip_all, fields(tap = %config.ifname, ip = %config.vm_ip))]
    pub async fn create(config: TapConfig) -> Result<Tap, TapError> {
        config.validate()?;
        let exists = run(&config, &["ip", "link", "show", "dev", &config.ifname])
            .await
            .is_ok();
        if !exists {
            run(
                &config,
                &["ip", "tuntap", "add", "dev", &config.ifname, "mode", "tap"],
            )
            .await?;
        }
        let tap = Tap {
            config,
            created: !exists,
        };
        match tap.configure().await {
            Ok(()) => {
                tracing::info!(created = tap.created, "tap ready");
                Ok(tap)
            }
            Err(e) => {
                tap.teardown().await.ok();
                Err(e)
            }
        }
    }

    async fn configure(&self) -> Result<(), TapError> {
        let c = &self.config;
        let itf = c.ifname.as_str();
        if let Some(gw) = c.gateway {
            run(
                c,
                &["ip", "addr", "replace", &format!("{gw}/32"), "dev", itf],
            )
            .await?;
        }
        run(c, &["ip", "link", "set", "dev", itf, "up"]).await?;
        let host = format!("{}/32", c.vm_ip);
        run(c, &["ip", "route", "replace", &host, "dev", itf]).await?;
        run(c, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]).await?;
        run(
            c,
            &[
                "sysctl",
                "-q",
                "-w",
                &format!("net/ipv4/conf/{itf}/forwarding=1"),
            ],
        )
        .await?;
        if let Some(ext) = &c.external {
            run(
                c,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("net/ipv4/conf/{ext}/forwarding=1"),
                ],
            )
            .await?;
        }
        Ok(())
    }

    /// The set-up.
    pub fn config(&self) -> &TapConfig {
        &self.config
    }

    /// The device name, for [`crate::qemu::Network::Tap`].
    pub fn ifname(&self) -> &str {
        &self.config.ifname
    }

    /// Whether this helper created the device (and teardown deletes it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Removes the host route and, if this helper created it, the device.
    /// Both steps are tried; the first failure is returned.
    pub async fn teardown(&self) -> Result<(), TapError> {
        let c = &self.config;
        let host = format!("{}/32", c.vm_ip);
        let route = run(c, &["ip", "route", "del", &host, "dev", &c.ifname]).await;
        let link = if self.created {
            run(c, &["ip", "link", "del", "dev", &c.ifname]).await
        } else {
            Ok(String::new())
        };
        Self::teardown_result(route, link)
    }

    /// [`Tap::teardown`], blocking the thread (for clean-up in `Drop`).
    pub fn teardown_blocking(&self) -> Result<(), TapError> {
        let c = &self.config;
        let host = format!("{}/32", c.vm_ip);
        let route = run_blocking(c, &["ip", "route", "del", &host, "dev", &c.ifname]);
        let link = if self.created {
            run_blocking(c, &["ip", "link", "del", "dev", &c.ifname])
        } else {
            Ok(String::new())
        };
        Self::teardown_result(route, link)
    }

    fn teardown_result(
        route: Result<String, TapError>,
        link: Result<String, TapError>,
    ) -> Result<(), TapError> {
        // A route that is already gone (the device went first) is fine.
        let route = match route {
            Err(TapError::Failed { stderr, .. })
                if stderr.contains("No such process") || stderr.contains("Cannot find device") =>
            {
                Ok(String::new())
            }
            other => other,
        };
        route.and(link).map(|_| ())
    }
}

/// The full argument vector of `argv` (inside the configured namespace).
fn full_argv<'a>(config: &'a TapConfig, argv: &[&'a str]) -> Vec<&'a str> {
    let mut full: Vec<&str> = Vec::with_capacity(argv.len() + 4);
    if let Some(ns) = &config.netns {
        full.extend(["ip", "netns", "exec", ns.as_str()]);
    }
    full.extend_from_slice(argv);
    full
}

/// Runs `argv` (inside the configured namespace) and returns its stdout.
async fn run(config: &TapConfig, argv: &[&str]) -> Result<String, TapError> {
    let full = full_argv(config, argv);
    let command = full.join(" ");
    let (program, args) = match full.split_first() {
        Some(split) => split,
        None => return Err(TapError::Invalid("empty command".into())),
    };
    tracing::debug!(%command, "running");
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| TapError::Spawn {
            command: command.clone(),
            source,
        })?;
    check(command, out)
}

/// Like [`run`], blocking the thread (for clean-up in `Drop`).
fn run_blocking(config: &TapConfig, argv: &[&str]) -> Result<String, TapError> {
    let full = full_argv(config, argv);
    let command = full.join(" ");
    let (program, args) = match full.split_first() {
        Some(split) => split,
        None => return Err(TapError::Invalid("empty command".into())),
    };
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TapError::Spawn {
            command: command.clone(),
            source,
        })?;
    check(command, out)
}

fn check(command: String, out: std::process::Output) -> Result<String, TapError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(TapError::Failed {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Reads whether IPv4 forwarding is on (in `netns`, if given).
pub async fn ip_forwarding(netns: Option<&str>) -> Result<bool, TapError> {
    let config = TapConfig {
        ifname: "lo".into(),
        vm_ip: Ipv4Addr::UNSPECIFIED,
        gateway: None,
        external: None,
        netns: netns.map(str::to_owned),
    };
    config.validate()?;
    let out = run(&config, &["sysctl", "-n", "net.ipv4.ip_forward"]).await?;
    Ok(out.trim() == "1")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_follows_the_mac_rule() {
        let mac: Mac = "52:54:0a:c8:01:05".parse().unwrap();
        let c = TapConfig::for_mac("tapvm3", &mac).unwrap();
        assert_eq!(c.vm_ip, Ipv4Addr::new(10, 200, 1, 5));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 200, 1, 1)));
        let foreign: Mac = "02:00:0a:c8:01:05".parse().unwrap();
        assert!(TapConfig::for_mac("t", &foreign).is_err());
    }

    #[test]
    fn names_that_could_reach_the_shell_or_sysctl_paths_are_refused() {
        let mac: Mac = "52:54:0a:c8:01:05".parse().unwrap();
        for bad in ["", "a b", "x/y", "sixteen-chars-xx", "..", "t;rm"] {
            let c = TapConfig::for_mac(bad, &mac).unwrap();
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        let c = TapConfig::for_mac("tap0", &mac).unwrap().in_netns("../x");
        assert!(c.validate().is_err());
    }
}

//! What a client asks `node.launch(spec)` for, and how the agent turns it
//! into a [`VmSpec`].
//!
//! Every field is optional; a missing field takes the agent's default. With
//! neither a kernel nor an image, the agent boots its default guest (the
//! `vmlinux` and `initrd.gz` of its `--guest-dir`, e.g. the tiny test guest)
//! and waits for its `GUEST-READY` line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::console::ReadyPattern;
use crate::net::VmAddress;
use crate::qemu::{Drive, Network, Serial, VmSpec};

/// The readiness line of the tiny test guest (and of images that follow
/// its convention).
pub const GUEST_READY_REGEX: &str = r"^GUEST-READY mac=\S+ ip=\S+";
/// The kernel command line given to the default guest.
pub const DEFAULT_APPEND: &str = "console=ttyS0 quiet panic=-1";
/// The largest VM a remote client may ask for, MiB (further bounded by the
/// node's usable memory).
const MAX_MEMORY_MIB: u64 = 1 << 22;

/// A launch request, as sent by clients (a map with these keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchSpec {
    /// The VM's name; default `vm-<block>-<index>`.
    pub name: Option<String>,
    /// Virtual CPUs; default 1.
    pub cpus: Option<u32>,
    /// Memory in MiB; default 128.
    pub memory_mib: Option<u64>,
    /// `-cpu` model; default QEMU's.
    pub cpu_model: Option<String>,
    /// Kernel for direct boot (absolute path on the agent's node).
    pub kernel: Option<PathBuf>,
    /// Its initramfs.
    pub initrd: Option<PathBuf>,
    /// Its command line; default [`DEFAULT_APPEND`].
    pub append: Option<String>,
    /// A disk image, opened with `snapshot=on` (the base stays untouched).
    pub image: Option<PathBuf>,
    /// Its format, `raw` (default) or `qcow2`.
    pub image_format: Option<String>,
    /// An optional second disk, also in snapshot mode.
    pub second_image: Option<PathBuf>,
    /// `user` (default), `none`, `tap` (the agent creates tap `vmt<block>-<index>`
    /// with the host route to the VM's IP and forwarding on, and removes it
    /// when the VM ends; root only), or `tap:IFNAME` (an existing device).
    pub network: Option<String>,
    /// The NIC model; default `virtio-net-pci`.
    pub nic_model: Option<String>,
    /// A regex the console must print before the VM counts as ready; default
    /// the guest's `GUEST-READY` line when booting the default guest, else
    /// ready as soon as QMP answers.
    pub ready_pattern: Option<String>,
    /// Serve the display over VNC on 127.0.0.1, display N.
    pub vnc_display: Option<u16>,
}

/// What the agent knows when it builds a spec.
#[derive(Debug)]
pub(crate) struct Defaults<'a> {
    pub block: u32,
    pub run_dir: &'a Path,
    pub guest_dir: Option<&'a Path>,
    pub accel: crate::Accel,
}

/// A spec turned into something QEMU can start.
#[derive(Debug)]
pub(crate) struct Built {
    pub spec: VmSpec,
    pub ready: Option<ReadyPattern>,
    /// The agent must set up this tap device (network `tap`).
    pub auto_tap: Option<String>,
}

/// The name of the tap the agent creates for VM `addr`.
pub fn auto_tap_name(addr: VmAddress) -> String {
    format!("vmt{}-{}", addr.block(), addr.index())
}

impl LaunchSpec {
    /// Memory asked for, with the default.
    pub fn memory(&self) -> u64 {
        self.memory_mib.unwrap_or(128)
    }

    /// Builds the QEMU spec for VM `addr`.
    pub(crate) fn build(&self, addr: VmAddress, d: &Defaults<'_>) -> Result<Built, String> {
        let name = match &self.name {
            Some(n) => n.clone(),
            None => format!("vm-{}-{}", d.block, addr.index()),
        };
        let memory = self.memory();
        if memory > MAX_MEMORY_MIB {
            return Err(format!("memory {memory} MiB is too large"));
        }
        let mut spec = VmSpec::new(&name, d.run_dir)
            .map_err(|e| e.to_string())?
            .memory_mib(memory)
            .cpus(self.cpus.unwrap_or(1))
            .accel(d.accel)
            .mac(addr.mac())
            .serial(Serial::Pipe);
        spec.cpu_model = self.cpu_model.clone();
        if let Some(model) = &self.nic_model {
            spec.nic_model = model.clone();
        }
        spec.vnc_display = self.vnc_display;
        let mut auto_tap = None;
        spec.network = match self.network.as_deref() {
            None | Some("user") => Network::User,
            Some("none") => Network::None,
            Some("tap") => {
                let name = auto_tap_name(addr);
                auto_tap = Some(name.clone());
                Network::Tap(name)
            }
            Some(other) => match other.strip_prefix("tap:") {
                Some(ifname) => Network::Tap(ifname.to_owned()),
                None => {
                    return Err(format!(
                        "network {other:?} is not user, none, tap or tap:IFNAME"
                    ))
                }
            },
        };

        let mut default_guest = false;
        match (&self.kernel, &self.image) {
            (Some(kernel), _) => {
                let kernel = absolute("kernel", kernel)?;
                let initrd = match &self.initrd {
                    Some(i) => Some(absolute("initrd", i)?),
                    None => None,
                };
                let append = self.append.as_deref().unwrap_or(DEFAULT_APPEND);
                spec = spec.kernel(kernel, initrd, append);
            }
            (None, Some(_)) => {}
            (None, None) => {
                let dir = d.guest_dir.ok_or(
                    "give a kernel or an image: this agent has no default guest (--guest-dir)",
                )?;
                let append = self.append.as_deref().unwrap_or(DEFAULT_APPEND);
                spec = spec.kernel(dir.join("vmlinux"), Some(dir.join("initrd.gz")), append);
                default_guest = true;
            }
        }
        if self.kernel.is_none() && self.initrd.is_some() {
            return Err("an initrd needs a kernel".into());
        }
        if let Some(image) = &self.image {
            let mut drive = Drive::new(absolute("image", image)?);
            if let Some(format) = &self.image_format {
                drive = drive.format(format.clone());
            }
            spec = spec.drive(drive);
        }
        if let Some(second) = &self.second_image {
            if self.image.is_none() {
                return Err("a second image needs a first one".into());
            }
            spec = spec.drive(Drive::new(absolute("second image", second)?));
        }
        spec.validate().map_err(|e| e.to_string())?;

        let ready = match (&self.ready_pattern, default_guest) {
            (Some(p), _) => {
                Some(ReadyPattern::regex(p).map_err(|e| format!("ready pattern {p:?}: {e}"))?)
            }
            (None, true) => Some(
                ReadyPattern::regex(GUEST_READY_REGEX)
                    .map_err(|e| format!("ready pattern {GUEST_READY_REGEX:?}: {e}"))?,
            ),
            (None, false) => None,
        };
        Ok(Built {
            spec,
            ready,
            auto_tap,
        })
    }
}

fn absolute(what: &str, path: &Path) -> Result<PathBuf, String> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Err(format!(
            "the {what} path {} must be absolute (it is opened on the agent's node)",
            path.display()
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn defaults(guest: Option<&Path>) -> Defaults<'_> {
        Defaults {
            block: 4,
            run_dir: Path::new("/run/vmctl-test"),
            guest_dir: guest,
            accel: crate::Accel::Tcg,
        }
    }

    #[test]
    fn an_empty_spec_boots_the_default_guest_with_its_ready_line() {
        let addr = VmAddress::new(4, 1).unwrap();
        let built = LaunchSpec::default()
            .build(addr, &defaults(Some(Path::new("/g"))))
            .unwrap();
        assert_eq!(built.spec.name, "vm-4-1");
        assert_eq!(built.spec.mac, Some(addr.mac()));
        let k = built.spec.kernel.unwrap();
        assert_eq!(k.kernel, Path::new("/g/vmlinux"));
        assert!(built
            .ready
            .unwrap()
            .is_match("GUEST-READY mac=52:54:0a:c8:04:03 ip=10.200.4.3"));
        let err = LaunchSpec::default()
            .build(addr, &defaults(None))
            .unwrap_err();
        assert!(err.contains("--guest-dir"), "{err}");
    }

    #[test]
    fn bad_requests_get_clear_errors() {
        let addr = VmAddress::new(0, 0).unwrap();
        let d = defaults(Some(Path::new("/g")));
        let cases = [
            (
                LaunchSpec {
                    image: Some("rel.raw".into()),
                    ..Default::default()
                },
                "absolute",
            ),
            (
                LaunchSpec {
                    network: Some("bridge".into()),
                    ..Default::default()
                },
                "tap:IFNAME",
            ),
            (
                LaunchSpec {
                    name: Some("a b".into()),
                    ..Default::default()
                },
                "name",
            ),
            (
                LaunchSpec {
                    memory_mib: Some(8),
                    ..Default::default()
                },
                "16 MiB",
            ),
            (
                LaunchSpec {
                    ready_pattern: Some("(".into()),
                    ..Default::default()
                },
                "ready pattern",
            ),
            (
                LaunchSpec {
                    second_image: Some("/b".into()),
                    ..Default::default()
                },
                "first one",
            ),
        ];
        for (spec, want) in cases {
            let err = spec.build(addr, &d).unwrap_err();
            assert!(err.contains(want), "{spec:?}: {err}");
        }
    }

    #[test]
    fn an_image_is_attached_in_snapshot_mode() {
        let addr = VmAddress::new(0, 0).unwrap();
        let spec = LaunchSpec {
            image: Some("/img/base.raw".into()),
            network: Some("tap:tapvm0".into()),
            ..Default::default()
        };
        let built = spec.build(addr, &defaults(None)).unwrap();
        assert!(built.spec.drives[0].snapshot);
        assert!(built.spec.kernel.is_none());
        assert!(built.ready.is_none());
        assert_eq!(built.spec.network, Network::Tap("tapvm0".into()));
    }
}

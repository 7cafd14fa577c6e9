//! What a VM is made of ([`VmSpec`]) and the `qemu-system-x86_64` command
//! line that makes it.
//!
//! The spec follows the article's launch line: a name, memory and CPUs, a
//! disk image opened with `snapshot=on` (the base image is never written, so
//! one image serves every VM and a broken VM is repaired by a restart), an
//! optional second drive, a NIC with a MAC from which the guest derives its
//! network, `-no-reboot` so that a panicking guest stops instead of looping,
//! an optional VNC display and a monitor. Unlike the article, the monitor is
//! QMP on a unix socket (not telnet on a port) and QEMU is not daemonized:
//! it runs as a child of its owner, which kills it when dropped.
//!
//! ```
//! use vmctl::qemu::{Network, VmSpec};
//!
//! let spec = VmSpec::new("vm0", "/run/vmctl")
//!     .unwrap()
//!     .memory_mib(256)
//!     .network(Network::None);
//! let argv = spec.argv(vmctl::accel::Accel::Tcg).unwrap();
//! assert!(argv.windows(2).any(|w| w == ["-m", "256"]));
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use crate::accel::{Accel, AccelError};
use crate::net::Mac;

/// The environment variable naming the QEMU binary (default
/// `qemu-system-x86_64`, looked up in `PATH`).
pub const QEMU_ENV: &str = "VMCTL_QEMU";
/// The default QEMU binary.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// Errors in a spec or in starting QEMU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QemuError {
    /// The spec is inconsistent or has a bad value.
    #[error("invalid VM spec for {name:?}: {what}")]
    InvalidSpec {
        /// The VM's name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// The accelerator could not be chosen.
    #[error(transparent)]
    Accel(#[from] AccelError),
    /// QEMU could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The binary.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How the guest's disk is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriveInterface {
    /// Paravirtual `virtio-blk` (`/dev/vda` in a Linux guest).
    #[default]
    Virtio,
    /// Emulated IDE, for guests without virtio drivers.
    Ide,
}

/// A disk image attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// The image file (absolute).
    pub path: PathBuf,
    /// The image format: `raw` or `qcow2`.
    pub format: String,
    /// The bus it is attached to.
    pub interface: DriveInterface,
    /// Writes go to a temporary overlay that vanishes with QEMU, and the
    /// image itself is opened read-only. On by default.
    pub snapshot: bool,
}

impl Drive {
    /// A raw virtio image in snapshot mode.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: "raw".into(),
            interface: DriveInterface::Virtio,
            snapshot: true,
        }
    }

    /// Sets the image format (`raw`, `qcow2`).
    pub fn format(mut self, format: impl Into<String>) -> Self {
        self.format = format.into();
        self
    }

    /// Sets the bus.
    pub fn interface(mut self, interface: DriveInterface) -> Self {
        self.interface = interface;
        self
    }

    /// Turns snapshot mode off: the guest then writes the image itself.
    pub fn writable(mut self) -> Self {
        self.snapshot = false;
        self
    }
}

/// Direct kernel boot: QEMU loads the kernel (an ELF `vmlinux` is booted
/// through its PVH entry point, much faster under TCG than a bzImage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectKernel {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub append: String,
}

/// How the NIC reaches the outside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// No NIC at all.
    None,
    /// QEMU's user-mode NAT (no privileges needed).
    #[default]
    User,
    /// A host tap device with this name; QEMU creates it if it is missing
    /// (root or `CAP_NET_ADMIN`) and no up/down scripts are run.
    Tap(String),
}

/// Where the serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Serial {
    /// Discarded.
    None,
    /// QEMU writes it to this file only.
    File(PathBuf),
    /// QEMU writes it to its stdout, which the owner reads.
    #[default]
    Pipe,
    /// Like `Pipe`, with a copy in this log file written by QEMU itself.
    PipeAndLog(PathBuf),
}

/// The description of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The VM's name (`-name`); letters, digits, `-`, `_` and `.`.
    pub name: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The accelerator to ask for.
    pub accel: Accel,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// `-cpu` model; `None` leaves QEMU's default (`qemu64`).
    pub cpu_model: Option<String>,
    /// Disks, in order (`vda`, `vdb`, …).
    pub drives: Vec<Drive>,
    /// Direct kernel boot instead of firmware booting a disk.
    pub kernel: Option<DirectKernel>,
    /// The QEMU NIC model (`virtio-net-pci`, `e1000`, …).
    pub nic_model: String,
    /// How the NIC is connected.
    pub network: Network,
    /// The NIC's MAC; `None` lets QEMU pick one.
    pub mac: Option<Mac>,
    /// Where the serial console goes.
    pub serial: Serial,
    /// VNC display number, served on 127.0.0.1 only (`5900 + N`).
    pub vnc_display: Option<u16>,
    /// The QMP unix socket path (absolute).
    pub qmp_socket: PathBuf,
    /// Stop instead of rebooting when the guest resets (on by default).
    pub no_reboot: bool,
    /// Extra arguments appended as they are.
    pub extra_args: Vec<String>,
}

impl VmSpec {
    /// A 128 MiB, 1-CPU VM named `name` with its QMP socket
    /// `run_dir/<name>.qmp` (`run_dir` is made absolute against the current
    /// directory), user networking, the console piped to its owner, and the
    /// QEMU binary from `VMCTL_QEMU` or `PATH`.
    pub fn new(name: impl Into<String>, run_dir: impl AsRef<Path>) -> Result<Self, QemuError> {
        let name = name.into();
        check_name(&name)?;
        let run_dir = absolute(run_dir.as_ref()).map_err(|e| QemuError::InvalidSpec {
            name: name.clone(),
            what: format!("run directory {}: {e}", run_dir.as_ref().display()),
        })?;
        Ok(Self {
            qmp_socket: run_dir.join(format!("{name}.qmp")),
            name,
            qemu: std::env::var_os(QEMU_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_QEMU)),
            accel: Accel::Auto,
            memory_mib: 128,
            cpus: 1,
            cpu_model: None,
            drives: Vec::new(),
            kernel: None,
            nic_model: "virtio-net-pci".into(),
            network: Network::User,
            mac: None,
            serial: Serial::Pipe,
            vnc_display: None,
            no_reboot: true,
            extra_args: Vec::new(),
        })
    }

    /// Sets the memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Sets the number of virtual CPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Sets the accelerator.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }

    /// Adds a drive.
    pub fn drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }

    /// Boots this kernel directly.
    pub fn kernel(
        mut self,
        kernel: impl Into<PathBuf>,
        initrd: Option<PathBuf>,
        append: impl Into<String>,
    ) -> Self {
        self.kernel = Some(DirectKernel {
            kernel: kernel.into(),
            initrd,
            append: append.into(),
        });
        self
    }

    /// Sets the network mode.
    pub fn network(mut self, network: Network) -> Self {
        self.network = network;
        self
    }

    /// Sets the NIC's MAC.
    pub fn mac(mut self, mac: Mac) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Sets where the serial console goes.
    pub fn serial(mut self, serial: Serial) -> Self {
        self.serial = serial;
        self
    }

    /// Serves the display over VNC on 127.0.0.1, display `n`.
    pub fn vnc(mut self, n: u16) -> Self {
        self.vnc_display = Some(n);
        self
    }

    /// Checks the spec for values QEMU would reject or misread.
    pub fn validate(&self) -> Result<(), QemuError> {
        let bad = |what: String| {
            Err(QemuError::InvalidSpec {
                name: self.name.clone(),
                what,
            })
        };
        check_name(&self.name)?;
        if self.memory_mib < 16 {
            return bad(format!("memory {} MiB is below 16 MiB", self.memory_mib));
        }
        if self.cpus == 0 || self.cpus > 1024 {
            return bad(format!("{} CPUs is out of range 1..=1024", self.cpus));
        }
        if !self.qmp_socket.is_absolute() {
            return bad(format!(
                "QMP socket path {} must be absolute",
                self.qmp_socket.display()
            ));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.qmp_socket.as_os_str().len() > 107 {
            return bad(format!(
                "QMP socket path {} is longer than 107 bytes",
                self.qmp_socket.display()
            ));
        }
        for drive in &self.drives {
            if !matches!(drive.format.as_str(), "raw" | "qcow2") {
                return bad(format!(
                    "drive format {:?} is not raw or qcow2",
                    drive.format
                ));
            }
        }
        if let Network::Tap(ifname) = &self.network {
            let ok = !ifname.is_empty()
                && ifname.len() < 16
                && ifname
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return bad(format!("tap interface name {ifname:?} is not valid"));
            }
        }
        if !is_plain(&self.nic_model) {
            return bad(format!("NIC model {:?} is not valid", self.nic_model));
        }
        if let Some(model) = &self.cpu_model {
            if model.is_empty() || model.chars().any(char::is_whitespace) {
                return bad(format!("CPU model {model:?} is not valid"));
            }
        }
        if self.drives.is_empty() && self.kernel.is_none() {
            tracing::debug!(vm = %self.name, "VM has neither a disk nor a kernel: firmware only");
        }
        Ok(())
    }

    /// The QEMU argument vector (without the program name) for `accel`,
    /// which must be resolved (not [`Accel::Auto`]).
    pub fn argv(&self, accel: Accel) -> Result<Vec<OsString>, QemuError> {
        self.validate()?;
        let accel = match accel {
            Accel::Auto => accel.resolve()?.accel,
            other => other,
        };
        let mut a = Args::default();
        a.push2(
            "-name",
            format!("guest={},debug-threads=on", opt(&self.name)),
        );
        a.push2("-accel", accel.to_string());
        if let Some(model) = &self.cpu_model {
            a.push2("-cpu", model);
        }
        a.push2("-m", self.memory_mib.to_string());
        a.push2("-smp", self.cpus.to_string());
        a.push("-nodefaults");
        a.push("-no-user-config");
        if self.no_reboot {
            a.push("-no-reboot");
        }
        match self.vnc_display {
            Some(n) => {
                a.push2("-vga", "std");
                a.push2("-display", "none");
                a.push2("-vnc", format!("127.0.0.1:{n}"));
            }
            None => a.push2("-display", "none"),
        }
        match &self.serial {
            Serial::None => a.push2("-serial", "null"),
            Serial::File(path) => {
                a.push2(
                    "-chardev",
                    join(&[&"file,id=serial0,path=", &opt_path(path)]),
                );
                a.push2("-serial", "chardev:serial0");
            }
            Serial::Pipe => {
                a.push2("-chardev", "stdio,id=serial0,signal=off");
                a.push2("-serial", "chardev:serial0");
            }
            Serial::PipeAndLog(path) => {
                a.push2(
                    "-chardev",
                    join(&[&"stdio,id=serial0,signal=off,logfile=", &opt_path(path)]),
                );
                a.push2("-serial", "chardev:serial0");
            }
        }
        if let Some(k) = &self.kernel {
            a.push2("-kernel", k.kernel.as_os_str());
            if let Some(initrd) = &k.initrd {
                a.push2("-initrd", initrd.as_os_str());
            }
            if !k.append.is_empty() {
                a.push2("-append", &k.append);
            }
        }
        for (index, d) in self.drives.iter().enumerate() {
            let interface = match d.interface {
                DriveInterface::Virtio => "virtio",
                DriveInterface::Ide => "ide",
            };
            a.push2(
                "-drive",
                join(&[
                    &"file=",
                    &opt_path(&d.path),
                    &format!(
                        ",format={},if={interface},index={index},snapshot={}",
                        d.format,
                        if d.snapshot { "on" } else { "off" }
                    ),
                ]),
            );
        }
        let mac = self.mac.map(|m| format!(",mac={m}")).unwrap_or_default();
        match &self.network {
            Network::None => a.push2("-nic", "none"),
            Network::User => a.push2("-nic", format!("user,model={}{mac}", self.nic_model)),
            Network::Tap(ifname) => a.push2(
                "-nic",
                format!(
                    "tap,ifname={ifname},script=no,downscript=no,model={}{mac}",
                    self.nic_model
                ),
            ),
        }
        a.push2(
            "-qmp",
            join(&[
                &"unix:",
                &opt_path(&self.qmp_socket),
                &",server=on,wait=off",
            ]),
        );
        for extra in &self.extra_args {
            a.push(extra);
        }
        Ok(a.0)
    }

    /// The command that starts this VM: stdin from `/dev/null`, stdout piped
    /// when the console is piped, stderr piped (QEMU's own messages), in its
    /// own process group (a Ctrl-C at the owner's terminal does not reach
    /// it), with SIGTERM, SIGINT and SIGHUP blocked (see
    /// [`shield_from_job_signals`]), and killed when the child handle is
    /// dropped.
    pub fn command(&self, accel: Accel) -> Result<tokio::process::Command, QemuError> {
        let argv = self.argv(accel)?;
        let mut cmd = tokio::process::Command::new(&self.qemu);
        cmd.args(argv)
            .stdin(Stdio::null())
            .stdout(match self.serial {
                Serial::Pipe | Serial::PipeAndLog(_) => Stdio::piped(),
                Serial::None | Serial::File(_) => Stdio::null(),
            })
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        shield_from_job_signals(&mut cmd);
        Ok(cmd)
    }

    /// The console log file, if QEMU writes one.
    pub fn console_log(&self) -> Option<&Path> {
        match &self.serial {
            Serial::File(p) | Serial::PipeAndLog(p) => Some(p),
            Serial::None | Serial::Pipe => None,
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the child. A batch system cancels a
/// job (`scancel`, pre-emption) by sending SIGTERM to every process of the
/// job, QEMU included, and QEMU quits at once on SIGTERM: the guest would
/// lose its graceful power-down. With these signals blocked (QEMU keeps the
/// inherited mask) only vmctl sees them, and it powers the VMs down through
/// QMP within the batch system's kill wait; SIGKILL still ends QEMU.
#[allow(unsafe_code)]
fn shield_from_job_signals(cmd: &mut tokio::process::Command) {
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    // SAFETY: the closure runs in the forked child before exec; it only
    // calls sigprocmask, which is async-signal-safe, on a set built before
    // the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(std::io::Error::from)
        });
    }
}

fn check_name(name: &str) -> Result<(), QemuError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(QemuError::InvalidSpec {
            name: name.to_owned(),
            what: "the name must be 1-64 letters, digits, '-', '_' or '.'".into(),
        });
    }
    Ok(())
}

fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// Escapes a value inside a QEMU `key=value,…` option: commas are doubled.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// [`opt`] for a path; a path is kept as raw bytes where it is not UTF-8.
fn opt_path(path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(path.as_os_str().len());
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn join(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> OsString {
    let mut out = OsString::new();
    for p in parts {
        out.push(p);
    }
    out
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, a: impl Into<OsString>) {
        self.0.push(a.into());
    }
    fn push2(&mut self, a: impl Into<OsString>, b: impl Into<OsString>) {
        self.0.push(a.into());
        self.0.push(b.into());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn strings(argv: Vec<OsString>) -> Vec<String> {
        argv.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    fn value_of<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn spec() -> VmSpec {
        VmSpec::new("vm-1", "/run/vmctl").unwrap()
    }

    #[test]
    fn article_style_vm() {
        let mac: Mac = "52:54:0a:c8:01:05".parse().unwrap();
        let s = spec()
            .memory_mib(2048)
            .cpus(2)
            .drive(Drive::new("/img/base.raw"))
            .drive(
                Drive::new("/img/data.qcow2")
                    .format("qcow2")
                    .interface(DriveInterface::Ide),
            )
            .network(Network::Tap("tapvm1".into()))
            .mac(mac)
            .vnc(3);
        let argv = strings(s.argv(Accel::Kvm).unwrap());
        assert_eq!(value_of(&argv, "-accel"), ["kvm"]);
        assert_eq!(value_of(&argv, "-m"), ["2048"]);
        assert_eq!(value_of(&argv, "-smp"), ["2"]);
        assert_eq!(value_of(&argv, "-name"), ["guest=vm-1,debug-threads=on"]);
        assert_eq!(
            value_of(&argv, "-drive"),
            [
                "file=/img/base.raw,format=raw,if=virtio,index=0,snapshot=on",
                "file=/img/data.qcow2,format=qcow2,if=ide,index=1,snapshot=on"
            ]
        );
        assert_eq!(
            value_of(&argv, "-nic"),
            ["tap,ifname=tapvm1,script=no,downscript=no,model=virtio-net-pci,mac=52:54:0a:c8:01:05"]
        );
        assert_eq!(value_of(&argv, "-vnc"), ["127.0.0.1:3"]);
        assert_eq!(
            value_of(&argv, "-qmp"),
            ["unix:/run/vmctl/vm-1.qmp,server=on,wait=off"]
        );
        assert!(argv.contains(&"-no-reboot".to_string()));
        assert!(argv.contains(&"-nodefaults".to_string()));
        assert!(!argv.contains(&"-daemonize".to_string()));
    }

    #[test]
    fn direct_kernel_boot_and_piped_console() {
        let s = spec()
            .kernel(
                "/g/vmlinux",
                Some("/g/initrd.gz".into()),
                "console=ttyS0 quiet",
            )
            .serial(Serial::PipeAndLog("/run/vmctl/vm-1.log".into()));
        let argv = strings(s.argv(Accel::Tcg).unwrap());
        assert_eq!(value_of(&argv, "-kernel"), ["/g/vmlinux"]);
        assert_eq!(value_of(&argv, "-initrd"), ["/g/initrd.gz"]);
        assert_eq!(value_of(&argv, "-append"), ["console=ttyS0 quiet"]);
        assert_eq!(
            value_of(&argv, "-chardev"),
            ["stdio,id=serial0,signal=off,logfile=/run/vmctl/vm-1.log"]
        );
        assert_eq!(value_of(&argv, "-serial"), ["chardev:serial0"]);
        assert_eq!(value_of(&argv, "-nic"), ["user,model=virtio-net-pci"]);
        assert_eq!(value_of(&argv, "-display"), ["none"]);
        assert!(value_of(&argv, "-drive").is_empty());
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let s = spec()
            .drive(Drive::new("/img/a,b.raw").writable())
            .serial(Serial::File("/logs/x,y".into()));
        let argv = strings(s.argv(Accel::Tcg).unwrap());
        assert_eq!(
            value_of(&argv, "-drive"),
            ["file=/img/a,,b.raw,format=raw,if=virtio,index=0,snapshot=off"]
        );
        assert_eq!(
            value_of(&argv, "-chardev"),
            ["file,id=serial0,path=/logs/x,,y"]
        );
    }

    #[test]
    fn no_network_and_no_console() {
        let s = spec().network(Network::None).serial(Serial::None);
        let argv = strings(s.argv(Accel::Tcg).unwrap());
        assert_eq!(value_of(&argv, "-nic"), ["none"]);
        assert_eq!(value_of(&argv, "-serial"), ["null"]);
    }

    #[test]
    fn relative_run_dir_becomes_absolute() {
        let s = VmSpec::new("a", "rel/dir").unwrap();
        assert!(s.qmp_socket.is_absolute(), "{}", s.qmp_socket.display());
        assert!(s.qmp_socket.ends_with("rel/dir/a.qmp"));
    }

    #[test]
    fn bad_specs_are_rejected_with_the_vm_name() {
        assert!(VmSpec::new("", "/r").is_err());
        assert!(VmSpec::new("a,b", "/r").is_err());
        let mut s = spec();
        s.qmp_socket = "relative.qmp".into();
        let e = s.argv(Accel::Tcg).unwrap_err().to_string();
        assert!(e.contains("vm-1") && e.contains("absolute"), "{e}");
        for s in [
            spec().memory_mib(1),
            spec().cpus(0),
            spec().network(Network::Tap("bad name".into())),
            spec().drive(Drive::new("/x").format("vmdk,foo")),
        ] {
            assert!(s.argv(Accel::Tcg).is_err(), "{s:?}");
        }
        let mut s = spec();
        s.qmp_socket = PathBuf::from(format!("/{}", "x".repeat(120)));
        assert!(s.argv(Accel::Tcg).unwrap_err().to_string().contains("107"));
    }
}

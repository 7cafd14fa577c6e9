//! Choosing the QEMU accelerator: KVM only where it really works.
//!
//! `/dev/kvm` existing is not enough. On some hosts (nested PVM, "Pagetable
//! based VM") `/dev/kvm` opens and `query-kvm` says enabled, yet a Linux guest
//! runs a hundred times slower than TCG and then dies with an emulation
//! failure. Such hosts show neither `vmx` (Intel VT-x) nor `svm` (AMD-V) in
//! `/proc/cpuinfo`. So [`Accel::Auto`] picks KVM only when `/dev/kvm` can be
//! opened read-write **and** the CPU flags show hardware virtualisation, and
//! TCG otherwise. `-accel kvm -accel tcg` is no substitute: it falls back
//! only when KVM fails to initialise, which it does not on such hosts.
//!
//! The choice can be forced with the `VMCTL_ACCEL` environment variable
//! (`kvm`, `tcg` or `auto`), which [`Accel::Auto`] consults first.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The environment variable that overrides [`Accel::Auto`].
pub const ACCEL_ENV: &str = "VMCTL_ACCEL";

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accel {
    /// `VMCTL_ACCEL` if set, else KVM where it really works, else TCG.
    #[default]
    Auto,
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's portable software emulator.
    Tcg,
}

/// Errors of accelerator selection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccelError {
    /// A name other than `auto`, `kvm` or `tcg`.
    #[error("unknown accelerator {0:?} (expected auto, kvm or tcg)")]
    Unknown(String),
    /// `VMCTL_ACCEL` holds an unknown name.
    #[error("{ACCEL_ENV}: {0}")]
    Env(Box<AccelError>),
}

impl FromStr for Accel {
    type Err = AccelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(AccelError::Unknown(s.to_owned())),
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A resolved choice, with the reason, for logs and `vmctl` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    /// [`Accel::Kvm`] or [`Accel::Tcg`], never `Auto`.
    pub accel: Accel,
    /// Why it was chosen.
    pub reason: String,
}

impl Accel {
    /// Resolves `Auto` by the environment and by probing this host; `Kvm` and
    /// `Tcg` are returned as they are.
    pub fn resolve(self) -> Result<AccelChoice, AccelError> {
        match self {
            Accel::Kvm | Accel::Tcg => Ok(AccelChoice {
                accel: self,
                reason: "asked for explicitly".into(),
            }),
            Accel::Auto => {
                if let Ok(value) = std::env::var(ACCEL_ENV) {
                    let forced: Accel = value.parse().map_err(|e| AccelError::Env(Box::new(e)))?;
                    if forced != Accel::Auto {
                        return Ok(AccelChoice {
                            accel: forced,
                            reason: format!("{ACCEL_ENV}={value}"),
                        });
                    }
                }
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                let kvm_opens = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .map_err(|e| e.to_string());
                Ok(choose(&cpuinfo, kvm_opens))
            }
        }
    }
}

/// The probing rule of [`Accel::Auto`], given the text of `/proc/cpuinfo`
/// and the outcome of opening `/dev/kvm` read-write.
pub fn choose<T>(cpuinfo: &str, dev_kvm: Result<T, String>) -> AccelChoice {
    let tcg = |reason: String| AccelChoice {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = dev_kvm {
        return tcg(format!("/dev/kvm is not usable ({e})"));
    }
    let has_flag = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    if has_flag("vmx") || has_flag("svm") {
        AccelChoice {
            accel: Accel::Kvm,
            reason: "/dev/kvm opens and the CPU has vmx/svm".into(),
        }
    } else {
        tcg(
            "/dev/kvm exists but /proc/cpuinfo shows neither vmx nor svm \
             (nested/PVM KVM cannot run a Linux guest)"
                .into(),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu svm sse2\n";
    const PVM: &str = "processor\t: 0\nflags\t\t: fpu vme sse2 hypervisor\n";

    #[test]
    fn kvm_needs_both_the_device_and_the_cpu_flags() {
        assert_eq!(choose(INTEL, Ok(())).accel, Accel::Kvm);
        assert_eq!(choose(AMD, Ok(())).accel, Accel::Kvm);
        let pvm = choose(PVM, Ok(()));
        assert_eq!(pvm.accel, Accel::Tcg);
        assert!(pvm.reason.contains("neither vmx nor svm"), "{}", pvm.reason);
        let no_dev = choose::<()>(INTEL, Err("No such file or directory".into()));
        assert_eq!(no_dev.accel, Accel::Tcg);
        assert!(no_dev.reason.contains("/dev/kvm"));
    }

    #[test]
    fn flag_must_be_a_whole_word() {
        assert_eq!(choose("flags\t: vmxfoo svmbar\n", Ok(())).accel, Accel::Tcg);
    }

    #[test]
    fn names_parse() {
        assert_eq!("KVM".parse::<Accel>().unwrap(), Accel::Kvm);
        assert_eq!(" tcg ".parse::<Accel>().unwrap(), Accel::Tcg);
        assert_eq!("auto".parse::<Accel>().unwrap(), Accel::Auto);
        assert!("xen".parse::<Accel>().is_err());
    }

    #[test]
    fn explicit_choice_is_kept() {
        assert_eq!(Accel::Tcg.resolve().unwrap().accel, Accel::Tcg);
        assert_eq!(Accel::Kvm.resolve().unwrap().accel, Accel::Kvm);
    }
}

//! The toolbox of the stock `rrpc-server`: built-in services reached by name
//! from the root, so a driver script can use a host without anyone writing
//! server code (RPyC's `rpyc_classic`, Batchlib's exec_proxy).
//!
//! - [`fs`]: files and directories, file objects by reference, a
//!   per-connection working directory, streamed and checksummed transfers;
//! - [`proc`]: run a command to completion, or spawn one and follow it;
//! - [`sys`]: facts about the host, its environment, a remote `sys.path`;
//! - [`script`]: a per-connection Rhai scope (`execute`, `eval`).
//!
//! [`stock_root`] assembles them (with the demo objects of the LXF article)
//! under the restrictions of [`ToolboxOptions`].
//!
//! ```
//! use rrpc_server::services::{stock_root, Service, ToolboxOptions};
//! let options = ToolboxOptions::default().expose_only([Service::Sys]);
//! let root = stock_root(&options).expect("a root");
//! # drop(root);
//! ```

pub mod fs;
pub mod proc;
mod remote_map;
mod root;
pub mod script;
pub mod sys;

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use remote_map::RemoteMap;
pub use root::{stock_root, StockRoot};

/// One built-in service of the stock server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Files and directories (`fs`).
    Fs,
    /// Processes (`proc`).
    Proc,
    /// System facts (`sys`).
    Sys,
    /// The script engine (`script`).
    Script,
}

impl Service {
    /// Every service, in listing order.
    pub const ALL: [Service; 4] = [Service::Fs, Service::Proc, Service::Sys, Service::Script];

    /// The name clients reach it by.
    pub fn name(self) -> &'static str {
        match self {
            Service::Fs => "fs",
            Service::Proc => "proc",
            Service::Sys => "sys",
            Service::Script => "script",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Service, String> {
        Service::ALL
            .into_iter()
            .find(|svc| svc.name() == s.trim())
            .ok_or_else(|| format!("unknown service {s:?} (known: fs, proc, sys, script)"))
    }
}

/// What the stock server exposes, and how the file service is restricted.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ToolboxOptions {
    /// The services clients may reach; the others answer `NotExposed`.
    pub expose: BTreeSet<Service>,
    /// Confines `fs` (and the root's `open`) to this directory tree.
    pub fs_root: Option<PathBuf>,
    /// Refuses every `fs` operation that would change a file.
    pub read_only: bool,
}

impl Default for ToolboxOptions {
    fn default() -> Self {
        ToolboxOptions {
            expose: Service::ALL.into_iter().collect(),
            fs_root: None,
            read_only: false,
        }
    }
}

impl ToolboxOptions {
    /// Exposes only `services`.
    pub fn expose_only(mut self, services: impl IntoIterator<Item = Service>) -> Self {
        self.expose = services.into_iter().collect();
        self
    }

    /// Hides `service`.
    pub fn without(mut self, service: Service) -> Self {
        self.expose.remove(&service);
        self
    }

    /// Confines the file service to `root`.
    pub fn fs_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.fs_root = Some(root.into());
        self
    }

    /// Makes the file service read-only.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Whether `service` is exposed.
    pub fn exposes(&self, service: Service) -> bool {
        self.expose.contains(&service)
    }
}

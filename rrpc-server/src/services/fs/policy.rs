//! Where the file service may go: an optional root directory, a read-only
//! switch, and each connection's working directory.

use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use rrpc_core::{CallContext, ErrorKind, RemoteError};

/// What an operation does to the path it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads it, following a final symlink.
    Read,
    /// Reads it without following a final symlink (`lstat`, `islink`).
    ReadLink,
    /// Changes it (or the directory holding it).
    Write,
}

/// The restrictions of the file service, shared by every connection.
#[derive(Debug)]
pub struct FsPolicy {
    /// The canonical root directory, when the server is confined to one.
    root: Option<PathBuf>,
    read_only: bool,
}

/// A connection's working directory (`fs.getcwd` / `fs.chdir`); `None`
/// until the first `chdir`, meaning the server's start directory.
#[derive(Debug, Default)]
pub struct ConnCwd(Mutex<Option<PathBuf>>);

impl FsPolicy {
    /// A policy confined to `root` (which must be a directory) if given.
    pub fn new(root: Option<&Path>, read_only: bool) -> std::io::Result<FsPolicy> {
        let root = match root {
            Some(dir) => {
                let canonical = dir.canonicalize().map_err(|e| {
                    std::io::Error::new(e.kind(), format!("file root {}: {e}", dir.display()))
                })?;
                if !canonical.is_dir() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("file root {} is not a directory", dir.display()),
                    ));
                }
                Some(canonical)
            }
            None => None,
        };
        Ok(FsPolicy { root, read_only })
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The root directory, if confined.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Where a connection starts: the root, or the server's directory.
    pub fn start_dir(&self) -> PathBuf {
        match &self.root {
            Some(root) => root.clone(),
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        }
    }

    /// The working directory of the calling connection.
    pub fn cwd(&self, cx: &CallContext) -> PathBuf {
        let state = cx.connection().extension::<ConnCwd>();
        let cwd = state.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        cwd.unwrap_or_else(|| self.start_dir())
    }

    /// Sets the working directory of the calling connection.
    pub fn set_cwd(&self, cx: &CallContext, dir: PathBuf) {
        let state = cx.connection().extension::<ConnCwd>();
        *state.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(dir);
    }

    /// Fails if the server is read-only.
    pub fn check_writable(&self, op: &str, path: &str) -> Result<(), RemoteError> {
        if self.read_only {
            return Err(RemoteError::new(
                ErrorKind::PermissionDenied,
                format!("{op} {path:?}: the server's files are read-only (--read-only)"),
            ));
        }
        Ok(())
    }

    /// Resolves `path` (relative to the connection's working directory) for
    /// `op`, enforcing the root and the read-only switch.
    pub fn resolve(
        &self,
        cx: &CallContext,
        op: &str,
        path: &str,
        access: Access,
    ) -> Result<PathBuf, RemoteError> {
        if path.is_empty() {
            return Err(RemoteError::bad_argument(format!("{op}: empty path")));
        }
        if path.contains('\0') {
            return Err(RemoteError::bad_argument(format!(
                "{op}: the path contains a NUL byte"
            )));
        }
        if access == Access::Write {
            self.check_writable(op, path)?;
        }
        let full = normalize(&self.cwd(cx).join(path));
        if let Some(root) = &self.root {
            let outside = || {
                RemoteError::new(
                    ErrorKind::PermissionDenied,
                    format!(
                        "{op} {path:?}: the path is outside the server's file root {}",
                        root.display()
                    ),
                )
            };
            if full != *root {
                // Symlinks may lead out of the root: judge where things really are.
                let real_parent = full.parent().map_or_else(|| full.clone(), real_prefix);
                if !real_parent.starts_with(root) {
                    return Err(outside());
                }
                if access != Access::ReadLink {
                    if let Ok(real) = full.canonicalize() {
                        if !real.starts_with(root) {
                            return Err(outside());
                        }
                    }
                }
            }
        }
        Ok(full)
    }
}

/// Removes `.` and `..` lexically (`..` at `/` stays at `/`).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push("/");
    }
    out
}

/// The canonical form of the longest existing ancestor of `path`, with the
/// rest appended.
fn real_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

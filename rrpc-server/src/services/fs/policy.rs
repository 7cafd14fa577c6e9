//! Where the file service may go: an optional root directory, a read-only
//! switch, and each connection's working directory.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use rrpc_core::{CallContext, ErrorKind, RemoteError};

use super::beneath::Target;

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
    /// A handle on the root: every confined operation resolves beneath it.
    root_dir: Option<Arc<Dir>>,
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
        let root_dir = match &root {
            Some(dir) => Some(Arc::new(
                Dir::open_ambient_dir(dir, ambient_authority()).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("file root {}: {e}", dir.display()))
                })?,
            )),
            None => None,
        };
        Ok(FsPolicy {
            root,
            root_dir,
            read_only,
        })
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
    /// `op`, enforcing the read-only switch. Under a root, the result names
    /// the path relative to the root's directory handle, and every
    /// operation on it resolves beneath that handle (`openat2` with
    /// `RESOLVE_BENEATH`, or an `O_NOFOLLOW` walk), so no `..` or symlink,
    /// however raced, leads out.
    pub fn resolve(
        &self,
        cx: &CallContext,
        op: &str,
        path: &str,
        access: Access,
    ) -> Result<Target, RemoteError> {
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
        match (&self.root, &self.root_dir) {
            (Some(root), Some(dir)) => {
                let rel = full.strip_prefix(root).map_err(|_| {
                    RemoteError::new(
                        ErrorKind::PermissionDenied,
                        format!(
                            "{op} {path:?}: the path is outside the server's file root {}",
                            root.display()
                        ),
                    )
                })?;
                Ok(Target::beneath(dir.clone(), rel.to_path_buf(), full))
            }
            _ => Ok(Target::host(full)),
        }
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

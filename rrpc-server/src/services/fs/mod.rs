//! `fs`: files and directories on the server (Batchlib's exec_proxy: mkdir,
//! chdir, listdir, stat, chmod, symlink, mkfifo, unlink, upload, download,
//! read, write), file objects by reference, a per-connection working
//! directory, and streamed, checksummed transfers of files of any size.

mod beneath;
mod policy;
mod transfer;

use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use rrpc_core::{Args, CallContext, ErrorKind, Member, Remote, RemoteError, Reply, Value};

use crate::demo::RemoteFile;
pub use beneath::{OpenSpec, Stat, Target};
pub use policy::{Access, ConnCwd, FsPolicy};
pub use transfer::{Download, Upload, MAX_CHUNK};

/// The largest file `fs.read` returns whole; use `download` beyond.
pub const MAX_WHOLE_READ: u64 = 8 * 1024 * 1024;

/// What `cap-std` says when resolving a path would leave the root.
const CAP_STD_ESCAPE: &str = "a path led outside of the filesystem";

/// The file service.
#[derive(Debug)]
pub struct Fs {
    policy: Arc<FsPolicy>,
}

/// An I/O error on `path` during `op`, with the OS's reason.
pub(crate) fn io_error(op: &str, path: &Path, err: std::io::Error) -> RemoteError {
    let kind = RemoteError::from(std::io::Error::from(err.kind())).kind;
    if err.kind() == std::io::ErrorKind::PermissionDenied && err.to_string() == CAP_STD_ESCAPE {
        return RemoteError::new(
            kind,
            format!(
                "{op} {}: the path leads outside the server's file root \
                 (a `..` or symlink beneath it points out)",
                path.display()
            ),
        );
    }
    RemoteError::new(kind, format!("{op} {}: {err}", path.display()))
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

impl Fs {
    /// A file service under `policy`.
    pub fn new(policy: Arc<FsPolicy>) -> Fs {
        Fs { policy }
    }

    fn path(
        &self,
        cx: &CallContext,
        args: &mut Args,
        index: usize,
        op: &str,
        access: Access,
    ) -> Result<Target, RemoteError> {
        let path: String = args.take(index, "path")?;
        self.policy.resolve(cx, op, &path, access)
    }

    /// `open(path, mode="r")`: a file object by reference.
    pub fn open(&self, cx: &CallContext, mut args: Args) -> Result<Value, RemoteError> {
        args.expect_count(1, 2)?;
        let mode: String = args.take_opt(1, "mode")?.unwrap_or_else(|| "r".to_owned());
        let writes = mode.contains(['w', 'a', '+', 'x']);
        let access = if writes { Access::Write } else { Access::Read };
        let spec = OpenSpec::from_mode(&mode).ok_or_else(|| {
            RemoteError::bad_argument(format!("open: unknown file mode {mode:?}"))
        })?;
        let path = self.path(cx, &mut args, 0, "open", access)?;
        let file = path
            .open(spec)
            .map_err(|e| io_error("open", path.shown(), e))?;
        Ok(Value::object(RemoteFile::from_file(
            path.shown().to_string_lossy().into_owned(),
            file,
        )))
    }

    /// `open` for callers that hold the service elsewhere (the root's `open`).
    pub async fn open_reply(
        self: Arc<Self>,
        cx: CallContext,
        args: Args,
    ) -> Result<Value, RemoteError> {
        tokio::task::spawn_blocking(move || self.open(&cx, args))
            .await
            .map_err(|e| RemoteError::internal(format!("open: {e}")))?
    }

    fn dispatch(
        &self,
        cx: &CallContext,
        method: &str,
        mut args: Args,
    ) -> Result<Value, RemoteError> {
        let a = &mut args;
        match method {
            "open" => self.open(cx, args),
            "listdir" => {
                a.expect_count(0, 1)?;
                let path: String = a.take_opt(0, "path")?.unwrap_or_else(|| ".".to_owned());
                let dir = self.policy.resolve(cx, "listdir", &path, Access::Read)?;
                let names = dir
                    .list()
                    .map_err(|e| io_error("listdir", dir.shown(), e))?;
                Ok(Value::from(names))
            }
            "stat" | "lstat" => {
                a.expect_count(1, 1)?;
                let follow = method == "stat";
                let access = if follow {
                    Access::Read
                } else {
                    Access::ReadLink
                };
                let path = self.path(cx, a, 0, method, access)?;
                let meta = path
                    .metadata(follow)
                    .map_err(|e| io_error(method, path.shown(), e))?;
                Ok(stat_value(&meta))
            }
            "exists" | "isdir" | "isfile" | "islink" => {
                a.expect_count(1, 1)?;
                let follow = method != "islink";
                let access = if follow {
                    Access::Read
                } else {
                    Access::ReadLink
                };
                let path = self.path(cx, a, 0, method, access)?;
                let meta = path.metadata(follow).ok();
                Ok(Value::Bool(match (method, meta) {
                    (_, None) => false,
                    ("exists", Some(_)) => true,
                    ("isdir", Some(m)) => m.is_dir(),
                    ("isfile", Some(m)) => m.is_file(),
                    (_, Some(m)) => m.kind == "symlink",
                }))
            }
            "mkdir" => {
                a.expect_count(1, 3)?;
                let path = self.path(cx, a, 0, "mkdir", Access::Write)?;
                let parents: bool = a.take_opt(1, "parents")?.unwrap_or(false);
                let mode: Option<u32> = a.take_opt(2, "mode")?;
                path.create_dir(parents, mode)
                    .map_err(|e| io_error("mkdir", path.shown(), e))?;
                Ok(Value::Unit)
            }
            "rmdir" => {
                a.expect_count(1, 2)?;
                let path = self.path(cx, a, 0, "rmdir", Access::Write)?;
                let recursive: bool = a.take_opt(1, "recursive")?.unwrap_or(false);
                self.refuse_root(&path, "rmdir")?;
                path.remove_dir(recursive)
                    .map_err(|e| io_error("rmdir", path.shown(), e))?;
                Ok(Value::Unit)
            }
            "remove" | "unlink" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, method, Access::Write)?;
                path.remove_file()
                    .map_err(|e| io_error(method, path.shown(), e))?;
                Ok(Value::Unit)
            }
            "rename" => {
                a.expect_count(2, 2)?;
                let from = self.path(cx, a, 0, "rename", Access::Write)?;
                let dst: String = a.take(1, "dst")?;
                let to = self.policy.resolve(cx, "rename", &dst, Access::Write)?;
                self.refuse_root(&from, "rename")?;
                self.refuse_root(&to, "rename")?;
                from.rename(&to)
                    .map_err(|e| io_error("rename", from.shown(), e))?;
                Ok(Value::Unit)
            }
            "chmod" => {
                a.expect_count(2, 2)?;
                let path = self.path(cx, a, 0, "chmod", Access::Write)?;
                let mode: u32 = a.take(1, "mode")?;
                if mode > 0o7777 {
                    return Err(RemoteError::bad_argument(format!(
                        "chmod: mode {mode:#o} is not a permission mode"
                    )));
                }
                path.chmod(mode)
                    .map_err(|e| io_error("chmod", path.shown(), e))?;
                Ok(Value::Unit)
            }
            "symlink" => {
                a.expect_count(2, 2)?;
                let target: String = a.take(0, "target")?;
                let link_arg: String = a.take(1, "link")?;
                if target.is_empty() || target.contains('\0') {
                    return Err(RemoteError::bad_argument(
                        "symlink: the target is empty or contains a NUL byte",
                    ));
                }
                let link = self
                    .policy
                    .resolve(cx, "symlink", &link_arg, Access::Write)?;
                link.symlink(&target)
                    .map_err(|e| io_error("symlink", link.shown(), e))?;
                Ok(Value::Unit)
            }
            "readlink" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "readlink", Access::ReadLink)?;
                let target = path
                    .read_link()
                    .map_err(|e| io_error("readlink", path.shown(), e))?;
                Ok(Value::from(target.to_string_lossy().into_owned()))
            }
            "mkfifo" => {
                a.expect_count(1, 2)?;
                let path = self.path(cx, a, 0, "mkfifo", Access::Write)?;
                let mode: u32 = a.take_opt(1, "mode")?.unwrap_or(0o644);
                path.mkfifo(mode)
                    .map_err(|e| io_error("mkfifo", path.shown(), e))?;
                Ok(Value::Unit)
            }
            "tempdir" => {
                a.expect_count(0, 1)?;
                let prefix: String = a
                    .take_opt(0, "prefix")?
                    .unwrap_or_else(|| "rrpc-".to_owned());
                if prefix.contains('/') || prefix.contains('\0') {
                    return Err(RemoteError::bad_argument(
                        "tempdir: the prefix names no directory",
                    ));
                }
                self.policy.check_writable("tempdir", &prefix)?;
                let base = match self.policy.root() {
                    Some(root) => root.to_path_buf(),
                    None => std::env::temp_dir(),
                };
                make_tempdir(&base, &prefix)
            }
            "getcwd" => {
                a.expect_count(0, 0)?;
                Ok(Value::from(
                    self.policy.cwd(cx).to_string_lossy().into_owned(),
                ))
            }
            "chdir" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "chdir", Access::Read)?;
                let meta = path
                    .metadata(true)
                    .map_err(|e| io_error("chdir", path.shown(), e))?;
                if !meta.is_dir() {
                    return Err(RemoteError::new(
                        ErrorKind::Io,
                        format!("chdir {}: not a directory", path.shown().display()),
                    ));
                }
                // Kept as a path, resolved beneath the root again at each use.
                self.policy.set_cwd(cx, path.shown().to_path_buf());
                Ok(Value::from(path.shown().to_string_lossy().into_owned()))
            }
            "abspath" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "abspath", Access::ReadLink)?;
                Ok(Value::from(path.shown().to_string_lossy().into_owned()))
            }
            "read" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "read", Access::Read)?;
                read_whole(&path)
            }
            "write" | "append" => {
                a.expect_count(2, 2)?;
                let path = self.path(cx, a, 0, method, Access::Write)?;
                let data = match a.take_value(1, "data")? {
                    Value::Str(s) => Bytes::from(s.into_bytes()),
                    Value::Bytes(b) => b,
                    other => {
                        return Err(RemoteError::bad_argument(format!(
                            "argument 1 (`data`): expected str or bytes, got {}",
                            other.type_name()
                        )))
                    }
                };
                let spec = OpenSpec::from_mode(if method == "append" { "a" } else { "w" })
                    .ok_or_else(|| RemoteError::internal(format!("{method}: no open mode")))?;
                let mut file = path
                    .open(spec)
                    .map_err(|e| io_error(method, path.shown(), e))?;
                std::io::Write::write_all(&mut file, &data)
                    .map_err(|e| io_error(method, path.shown(), e))?;
                Ok(Value::from(data.len()))
            }
            "upload" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "upload", Access::Write)?;
                Upload::create(path).map(Value::object)
            }
            "download" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "download", Access::Read)?;
                Download::open(path).map(Value::object)
            }
            other => Err(RemoteError::no_such_method("fs", other)),
        }
    }

    fn refuse_root(&self, path: &Target, op: &str) -> Result<(), RemoteError> {
        if path.is_root() {
            return Err(RemoteError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{op} {}: that is the server's file root",
                    path.shown().display()
                ),
            ));
        }
        Ok(())
    }
}

static TEMPDIR_COUNTER: AtomicU64 = AtomicU64::new(0);

fn make_tempdir(base: &Path, prefix: &str) -> Result<Value, RemoteError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let n = TEMPDIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{}-{nanos:x}-{n}", std::process::id());
        let dir = base.join(name);
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&dir) {
            Ok(()) => return Ok(Value::from(dir.to_string_lossy().into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error("tempdir", &dir, e)),
        }
    }
    Err(RemoteError::new(
        ErrorKind::Io,
        format!("tempdir: no free name under {}", base.display()),
    ))
}

/// Reads a regular file whole, at most [`MAX_WHOLE_READ`] bytes: bounded by
/// what the reads return, not by what `stat` says (`/proc` files, devices).
/// Anything but a regular file is refused, so a FIFO or device never holds a
/// thread (the open itself is non-blocking).
fn read_whole(path: &Target) -> Result<Value, RemoteError> {
    let file = path
        .open(OpenSpec {
            read: true,
            ..OpenSpec::default()
        })
        .map_err(|e| io_error("read", path.shown(), e))?;
    let meta = file
        .metadata()
        .map_err(|e| io_error("read", path.shown(), e))?;
    if !meta.is_file() {
        return Err(RemoteError::bad_argument(format!(
            "read {}: not a regular file (a FIFO, device or directory is not read whole; \
             use open(...) for it)",
            path.shown().display()
        )));
    }
    let mut data = Vec::new();
    file.take(MAX_WHOLE_READ + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_error("read", path.shown(), e))?;
    if data.len() as u64 > MAX_WHOLE_READ {
        return Err(RemoteError::bad_argument(format!(
            "read {}: the file has more than the {MAX_WHOLE_READ} bytes read whole; \
             use download or open(...).read_bytes(n)",
            path.shown().display()
        )));
    }
    Ok(match String::from_utf8(data) {
        Ok(text) => Value::Str(text),
        Err(e) => Value::Bytes(Bytes::from(e.into_bytes())),
    })
}

fn stat_value(meta: &Stat) -> Value {
    let time = |(secs, nsecs): (i64, i64)| Value::Float(secs as f64 + nsecs as f64 * 1e-9);
    map(vec![
        ("kind", meta.kind.into()),
        ("size", meta.size.into()),
        ("mode", meta.mode.into()),
        ("uid", meta.uid.into()),
        ("gid", meta.gid.into()),
        ("nlink", meta.nlink.into()),
        ("mtime", time(meta.mtime)),
        ("atime", time(meta.atime)),
        ("ctime", time(meta.ctime)),
    ])
}

const BLOCKING: &[&str] = &[
    "open", "listdir", "stat", "lstat", "exists", "isdir", "isfile", "islink", "mkdir", "rmdir",
    "remove", "unlink", "rename", "chmod", "symlink", "readlink", "mkfifo", "tempdir", "getcwd",
    "chdir", "abspath", "read", "write", "append", "upload", "download",
];

impl Remote for Fs {
    fn type_name(&self) -> &str {
        "fs"
    }

    fn call(self: Arc<Self>, cx: CallContext, method: &str, args: Args) -> Reply {
        if !BLOCKING.contains(&method) {
            return Reply::err(RemoteError::no_such_method("fs", method));
        }
        let method = method.to_owned();
        Reply::blocking(move || {
            self.dispatch(&cx, &method, args)
                .map_err(|e| e.context(format!("fs.{method}")))
        })
    }

    fn get_attr(self: Arc<Self>, _cx: CallContext, name: &str) -> Reply {
        match name {
            "read_only" => Reply::ready(self.policy.is_read_only()),
            "root" => Reply::ready(self.policy.root().map(|r| r.to_string_lossy().into_owned())),
            _ => Reply::err(RemoteError::no_such_attribute("fs", name)),
        }
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("open", "open(path: str, mode: str = \"r\") -> File"),
            Member::method("listdir", "listdir(path: str = \".\") -> list[str]"),
            Member::method("stat", "stat(path: str) -> map"),
            Member::method("lstat", "lstat(path: str) -> map"),
            Member::method("exists", "exists(path: str) -> bool"),
            Member::method("isdir", "isdir(path: str) -> bool"),
            Member::method("isfile", "isfile(path: str) -> bool"),
            Member::method("islink", "islink(path: str) -> bool"),
            Member::method(
                "mkdir",
                "mkdir(path: str, parents: bool = false, mode: int = 0o777)",
            ),
            Member::method("rmdir", "rmdir(path: str, recursive: bool = false)"),
            Member::method("remove", "remove(path: str)"),
            Member::method("unlink", "unlink(path: str)"),
            Member::method("rename", "rename(src: str, dst: str)"),
            Member::method("chmod", "chmod(path: str, mode: int)"),
            Member::method("symlink", "symlink(target: str, link: str)"),
            Member::method("readlink", "readlink(path: str) -> str"),
            Member::method("mkfifo", "mkfifo(path: str, mode: int = 0o644)"),
            Member::method("tempdir", "tempdir(prefix: str = \"rrpc-\") -> str"),
            Member::method("getcwd", "getcwd() -> str"),
            Member::method("chdir", "chdir(path: str) -> str"),
            Member::method("abspath", "abspath(path: str) -> str"),
            Member::method("read", "read(path: str) -> str | bytes"),
            Member::method("write", "write(path: str, data: str | bytes) -> int"),
            Member::method("append", "append(path: str, data: str | bytes) -> int"),
            Member::method("upload", "upload(path: str) -> Upload"),
            Member::method("download", "download(path: str) -> Download"),
            Member::attribute("read_only", "bool"),
            Member::attribute("root", "str | None"),
        ]
    }
}

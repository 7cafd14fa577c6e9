//! `fs`: files and directories on the server (Batchlib's exec_proxy: mkdir,
//! chdir, listdir, stat, chmod, symlink, mkfifo, unlink, upload, download,
//! read, write), file objects by reference, a per-connection working
//! directory, and streamed, checksummed transfers of files of any size.

mod policy;
mod transfer;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use rrpc_core::{Args, CallContext, ErrorKind, Member, Remote, RemoteError, Reply, Value};

use crate::demo::RemoteFile;
pub use policy::{Access, ConnCwd, FsPolicy};
pub use transfer::{Download, Upload, MAX_CHUNK};

/// The largest file `fs.read` returns whole; use `download` beyond.
pub const MAX_WHOLE_READ: u64 = 8 * 1024 * 1024;

/// The file service.
#[derive(Debug)]
pub struct Fs {
    policy: Arc<FsPolicy>,
}

/// An I/O error on `path` during `op`, with the OS's reason.
pub(crate) fn io_error(op: &str, path: &Path, err: std::io::Error) -> RemoteError {
    let kind = RemoteError::from(std::io::Error::from(err.kind())).kind;
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
    ) -> Result<std::path::PathBuf, RemoteError> {
        let path: String = args.take(index, "path")?;
        self.policy.resolve(cx, op, &path, access)
    }

    /// `open(path, mode="r")`: a file object by reference.
    pub fn open(&self, cx: &CallContext, mut args: Args) -> Result<Value, RemoteError> {
        args.expect_count(1, 2)?;
        let mode: String = args.take_opt(1, "mode")?.unwrap_or_else(|| "r".to_owned());
        let writes = mode.contains(['w', 'a', '+', 'x']);
        let access = if writes { Access::Write } else { Access::Read };
        let path = self.path(cx, &mut args, 0, "open", access)?;
        let text = path.to_str().ok_or_else(|| {
            RemoteError::bad_argument(format!("open: {} is not UTF-8", path.display()))
        })?;
        RemoteFile::open(text, &mode)
            .map(Value::object)
            .map_err(|e| RemoteError::new(e.kind, format!("open {text}: {}", e.message)))
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
                let entries = fs::read_dir(&dir).map_err(|e| io_error("listdir", &dir, e))?;
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| io_error("listdir", &dir, e))?;
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
                names.sort();
                Ok(Value::from(names))
            }
            "stat" | "lstat" => {
                a.expect_count(1, 1)?;
                let access = if method == "lstat" {
                    Access::ReadLink
                } else {
                    Access::Read
                };
                let path = self.path(cx, a, 0, method, access)?;
                let meta = if method == "lstat" {
                    fs::symlink_metadata(&path)
                } else {
                    fs::metadata(&path)
                }
                .map_err(|e| io_error(method, &path, e))?;
                Ok(stat_value(&meta))
            }
            "exists" | "isdir" | "isfile" | "islink" => {
                a.expect_count(1, 1)?;
                let access = if method == "islink" {
                    Access::ReadLink
                } else {
                    Access::Read
                };
                let path = self.path(cx, a, 0, method, access)?;
                Ok(Value::Bool(match method {
                    "exists" => path.exists(),
                    "isdir" => path.is_dir(),
                    "isfile" => path.is_file(),
                    _ => path.is_symlink(),
                }))
            }
            "mkdir" => {
                a.expect_count(1, 3)?;
                let path = self.path(cx, a, 0, "mkdir", Access::Write)?;
                let parents: bool = a.take_opt(1, "parents")?.unwrap_or(false);
                let mode: Option<u32> = a.take_opt(2, "mode")?;
                let mut builder = fs::DirBuilder::new();
                builder.recursive(parents);
                if let Some(mode) = mode {
                    std::os::unix::fs::DirBuilderExt::mode(&mut builder, mode);
                }
                builder
                    .create(&path)
                    .map_err(|e| io_error("mkdir", &path, e))?;
                Ok(Value::Unit)
            }
            "rmdir" => {
                a.expect_count(1, 2)?;
                let path = self.path(cx, a, 0, "rmdir", Access::Write)?;
                let recursive: bool = a.take_opt(1, "recursive")?.unwrap_or(false);
                self.refuse_root(&path, "rmdir")?;
                if recursive {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_dir(&path)
                }
                .map_err(|e| io_error("rmdir", &path, e))?;
                Ok(Value::Unit)
            }
            "remove" | "unlink" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, method, Access::Write)?;
                fs::remove_file(&path).map_err(|e| io_error(method, &path, e))?;
                Ok(Value::Unit)
            }
            "rename" => {
                a.expect_count(2, 2)?;
                let from = self.path(cx, a, 0, "rename", Access::Write)?;
                let dst: String = a.take(1, "dst")?;
                let to = self.policy.resolve(cx, "rename", &dst, Access::Write)?;
                self.refuse_root(&from, "rename")?;
                fs::rename(&from, &to).map_err(|e| io_error("rename", &from, e))?;
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
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_error("chmod", &path, e))?;
                Ok(Value::Unit)
            }
            "symlink" => {
                a.expect_count(2, 2)?;
                let target: String = a.take(0, "target")?;
                let link_arg: String = a.take(1, "link")?;
                let link = self
                    .policy
                    .resolve(cx, "symlink", &link_arg, Access::Write)?;
                if self.policy.root().is_some() {
                    // The target must stay inside the root too.
                    let base = link.parent().map(Path::to_path_buf).unwrap_or_default();
                    let seen_from = base.join(&target);
                    let shown = seen_from.to_string_lossy().into_owned();
                    self.policy.resolve(cx, "symlink", &shown, Access::Write)?;
                }
                std::os::unix::fs::symlink(&target, &link)
                    .map_err(|e| io_error("symlink", &link, e))?;
                Ok(Value::Unit)
            }
            "readlink" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "readlink", Access::ReadLink)?;
                let target = fs::read_link(&path).map_err(|e| io_error("readlink", &path, e))?;
                Ok(Value::from(target.to_string_lossy().into_owned()))
            }
            "mkfifo" => {
                a.expect_count(1, 2)?;
                let path = self.path(cx, a, 0, "mkfifo", Access::Write)?;
                let mode: u32 = a.take_opt(1, "mode")?.unwrap_or(0o644);
                let mode = nix::sys::stat::Mode::from_bits_truncate(mode);
                nix::unistd::mkfifo(&path, mode)
                    .map_err(|e| io_error("mkfifo", &path, std::io::Error::from(e)))?;
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
                let meta = fs::metadata(&path).map_err(|e| io_error("chdir", &path, e))?;
                if !meta.is_dir() {
                    return Err(RemoteError::new(
                        ErrorKind::Io,
                        format!("chdir {}: not a directory", path.display()),
                    ));
                }
                self.policy.set_cwd(cx, path.clone());
                Ok(Value::from(path.to_string_lossy().into_owned()))
            }
            "abspath" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "abspath", Access::ReadLink)?;
                Ok(Value::from(path.to_string_lossy().into_owned()))
            }
            "read" => {
                a.expect_count(1, 1)?;
                let path = self.path(cx, a, 0, "read", Access::Read)?;
                let meta = fs::metadata(&path).map_err(|e| io_error("read", &path, e))?;
                if meta.len() > MAX_WHOLE_READ {
                    return Err(RemoteError::bad_argument(format!(
                        "read {}: the file has {} bytes, more than the {} read whole; \
                         use download or open(...).read_bytes(n)",
                        path.display(),
                        meta.len(),
                        MAX_WHOLE_READ
                    )));
                }
                let data = fs::read(&path).map_err(|e| io_error("read", &path, e))?;
                Ok(match String::from_utf8(data) {
                    Ok(text) => Value::Str(text),
                    Err(e) => Value::Bytes(Bytes::from(e.into_bytes())),
                })
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
                let mut opts = fs::OpenOptions::new();
                if method == "append" {
                    opts.append(true).create(true);
                } else {
                    opts.write(true).create(true).truncate(true);
                }
                let mut file = opts.open(&path).map_err(|e| io_error(method, &path, e))?;
                std::io::Write::write_all(&mut file, &data)
                    .map_err(|e| io_error(method, &path, e))?;
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

    fn refuse_root(&self, path: &Path, op: &str) -> Result<(), RemoteError> {
        if self.policy.root() == Some(path) {
            return Err(RemoteError::new(
                ErrorKind::PermissionDenied,
                format!("{op} {}: that is the server's file root", path.display()),
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
        let mut builder = fs::DirBuilder::new();
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

fn stat_value(meta: &fs::Metadata) -> Value {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "device"
        } else {
            "other"
        }
    };
    let time = |secs: i64, nsecs: i64| Value::Float(secs as f64 + nsecs as f64 * 1e-9);
    map(vec![
        ("kind", kind.into()),
        ("size", meta.len().into()),
        ("mode", (meta.mode() & 0o7777).into()),
        ("uid", meta.uid().into()),
        ("gid", meta.gid().into()),
        ("nlink", meta.nlink().into()),
        ("mtime", time(meta.mtime(), meta.mtime_nsec())),
        ("atime", time(meta.atime(), meta.atime_nsec())),
        ("ctime", time(meta.ctime(), meta.ctime_nsec())),
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

//! A path the file service acts on: either the host's own path (no
//! `--fs-root`), or a path relative to a directory handle of the root, every
//! operation on it resolved beneath that handle by `cap-std` (`openat2` with
//! `RESOLVE_BENEATH` where the kernel has it, an `openat` walk with
//! `O_NOFOLLOW` otherwise), so a `..` or a symlink that leads out of the
//! root is refused at the moment of use, however the tree is raced.

use std::fs::{self, File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use cap_std::fs::{
    Dir, DirBuilder as CapDirBuilder, DirBuilderExt as _, OpenOptions as CapOpenOptions,
    OpenOptionsExt as _, Permissions as CapPermissions, PermissionsExt as _,
};

/// How a file is opened (the union of what `open`, `read`, `write`,
/// `append`, `upload` and `download` need).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenSpec {
    /// Open for reading.
    pub read: bool,
    /// Open for writing.
    pub write: bool,
    /// Writes go to the end.
    pub append: bool,
    /// Create the file if missing.
    pub create: bool,
    /// Truncate the file.
    pub truncate: bool,
}

impl OpenSpec {
    /// The spec of a Python-style mode (`r`, `w`, `a`, `r+`, `w+`, `a+`,
    /// each optionally with `b`), or `None` for an unknown mode.
    pub fn from_mode(mode: &str) -> Option<OpenSpec> {
        let none = OpenSpec::default();
        Some(match mode.trim_end_matches('b') {
            "r" => OpenSpec { read: true, ..none },
            "r+" => OpenSpec {
                read: true,
                write: true,
                ..none
            },
            "w" => OpenSpec {
                write: true,
                create: true,
                truncate: true,
                ..none
            },
            "w+" => OpenSpec {
                read: true,
                write: true,
                create: true,
                truncate: true,
                ..none
            },
            "a" => OpenSpec {
                append: true,
                create: true,
                ..none
            },
            "a+" => OpenSpec {
                read: true,
                append: true,
                create: true,
                ..none
            },
            _ => return None,
        })
    }
}

/// A resolved path: the host's, or one beneath the root's handle.
#[derive(Debug, Clone)]
pub struct Target {
    /// The path as shown to users (absolute, lexically normal).
    shown: PathBuf,
    /// The root's handle and the path beneath it, when confined.
    beneath: Option<(Arc<Dir>, PathBuf)>,
}

/// The error for a symlink whose target would leave the root.
fn escaping_link(target: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "the link's target {target:?} leads outside the server's file root \
             (under --fs-root a target must be relative and stay beneath the root)"
        ),
    )
}

impl Target {
    /// The host's `path` itself (no root).
    pub fn host(path: PathBuf) -> Target {
        Target {
            shown: path,
            beneath: None,
        }
    }

    /// `rel` beneath `root`, shown as `shown`.
    pub fn beneath(root: Arc<Dir>, rel: PathBuf, shown: PathBuf) -> Target {
        Target {
            shown,
            beneath: Some((root, rel)),
        }
    }

    /// The path as users see it.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Whether this is the root itself (under `--fs-root`).
    pub fn is_root(&self) -> bool {
        matches!(&self.beneath, Some((_, rel)) if rel.as_os_str().is_empty())
    }

    /// A sibling of this path called `name`.
    pub fn with_file_name(&self, name: &str) -> Target {
        Target {
            shown: self.shown.with_file_name(name),
            beneath: self
                .beneath
                .as_ref()
                .map(|(dir, rel)| (dir.clone(), rel.with_file_name(name))),
        }
    }

    fn rel(rel: &Path) -> &Path {
        if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        }
    }

    /// Opens the file. Always non-blocking at open, so a FIFO or device
    /// never holds the thread there.
    pub fn open(&self, spec: OpenSpec) -> std::io::Result<File> {
        let flags = nix::libc::O_NONBLOCK;
        match &self.beneath {
            None => fs::OpenOptions::new()
                .read(spec.read)
                .write(spec.write)
                .append(spec.append)
                .create(spec.create)
                .truncate(spec.truncate)
                .custom_flags(flags)
                .open(&self.shown),
            Some((dir, rel)) => {
                let mut opts = CapOpenOptions::new();
                opts.read(spec.read)
                    .write(spec.write)
                    .append(spec.append)
                    .create(spec.create)
                    .truncate(spec.truncate)
                    .custom_flags(flags);
                dir.open_with(Self::rel(rel), &opts).map(|f| f.into_std())
            }
        }
    }

    /// The metadata, following a final symlink or not.
    pub fn metadata(&self, follow: bool) -> std::io::Result<Stat> {
        match &self.beneath {
            None => if follow {
                fs::metadata(&self.shown)
            } else {
                fs::symlink_metadata(&self.shown)
            }
            .map(|m| Stat::from_std(&m)),
            Some((dir, rel)) => if follow {
                dir.metadata(Self::rel(rel))
            } else {
                dir.symlink_metadata(Self::rel(rel))
            }
            .map(|m| Stat::from_cap(&m)),
        }
    }

    /// The names in this directory.
    pub fn list(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        match &self.beneath {
            None => {
                for entry in fs::read_dir(&self.shown)? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
            }
            Some((dir, rel)) => {
                for entry in dir.read_dir(Self::rel(rel))? {
                    names.push(entry?.file_name().to_string_lossy().into_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// Creates the directory (and its parents if `parents`).
    pub fn create_dir(&self, parents: bool, mode: Option<u32>) -> std::io::Result<()> {
        match &self.beneath {
            None => {
                let mut builder = fs::DirBuilder::new();
                builder.recursive(parents);
                if let Some(mode) = mode {
                    builder.mode(mode);
                }
                builder.create(&self.shown)
            }
            Some((dir, rel)) => {
                let mut builder = CapDirBuilder::new();
                builder.recursive(parents);
                if let Some(mode) = mode {
                    builder.mode(mode);
                }
                dir.create_dir_with(Self::rel(rel), &builder)
            }
        }
    }

    /// Removes the directory (with its contents if `recursive`; symlinks
    /// inside are removed, never followed).
    pub fn remove_dir(&self, recursive: bool) -> std::io::Result<()> {
        match (&self.beneath, recursive) {
            (None, false) => fs::remove_dir(&self.shown),
            (None, true) => fs::remove_dir_all(&self.shown),
            (Some((dir, rel)), false) => dir.remove_dir(Self::rel(rel)),
            (Some((dir, rel)), true) => dir.remove_dir_all(Self::rel(rel)),
        }
    }

    /// Removes the file (or symlink).
    pub fn remove_file(&self) -> std::io::Result<()> {
        match &self.beneath {
            None => fs::remove_file(&self.shown),
            Some((dir, rel)) => dir.remove_file(Self::rel(rel)),
        }
    }

    /// Renames this path to `to` (both resolved the same way).
    pub fn rename(&self, to: &Target) -> std::io::Result<()> {
        match (&self.beneath, &to.beneath) {
            (Some((dir, from)), Some((to_dir, to_rel))) => {
                dir.rename(Self::rel(from), to_dir, Self::rel(to_rel))
            }
            _ => fs::rename(&self.shown, &to.shown),
        }
    }

    /// Sets the permission bits.
    pub fn chmod(&self, mode: u32) -> std::io::Result<()> {
        match &self.beneath {
            None => fs::set_permissions(&self.shown, fs::Permissions::from_mode(mode)),
            Some((dir, rel)) => {
                dir.set_permissions(Self::rel(rel), CapPermissions::from_mode(mode))
            }
        }
    }

    /// Reads the symlink's target.
    pub fn read_link(&self) -> std::io::Result<PathBuf> {
        match &self.beneath {
            None => fs::read_link(&self.shown),
            Some((dir, rel)) => dir.read_link(Self::rel(rel)),
        }
    }

    /// Makes this path a symlink to `target`. Under a root, `target` must
    /// stay beneath the root as the OS will follow it from the link's real
    /// directory: relative, with `..` only leading and no more of them than
    /// the directory is deep. (Every later access resolves beneath the root
    /// anyway, so even a link that escaped could never be followed out.)
    pub fn symlink(&self, target: &str) -> std::io::Result<()> {
        let Some((dir, rel)) = &self.beneath else {
            return std::os::unix::fs::symlink(target, &self.shown);
        };
        let (parent, name) = split(rel)?;
        let parent_dir = dir.open_dir(Self::rel(parent))?;
        let mut ups = 0usize;
        let mut named = false;
        for part in Path::new(target).components() {
            match part {
                Component::ParentDir if !named => ups += 1,
                Component::CurDir => {}
                Component::Normal(_) => named = true,
                _ => return Err(escaping_link(target)),
            }
        }
        if ups > 0 && ups > depth_beneath(dir, &parent_dir)? {
            return Err(escaping_link(target));
        }
        parent_dir.symlink(target, name)
    }

    /// Makes this path a FIFO.
    pub fn mkfifo(&self, mode: u32) -> std::io::Result<()> {
        let mode = nix::sys::stat::Mode::from_bits_truncate(mode);
        match &self.beneath {
            None => nix::unistd::mkfifo(&self.shown, mode).map_err(std::io::Error::from),
            Some((dir, rel)) => {
                let (parent, name) = split(rel)?;
                let parent_dir = dir.open_dir(Self::rel(parent))?;
                nix::unistd::mkfifoat(Some(parent_dir.as_raw_fd()), name, mode)
                    .map_err(std::io::Error::from)
            }
        }
    }
}

/// The directory and final name of a path beneath the root.
fn split(rel: &Path) -> std::io::Result<(&Path, &Path)> {
    match (rel.parent(), rel.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, Path::new(name))),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "that is the server's file root",
        )),
    }
}

/// How many directories `dir` really is below `root` (from the kernel's
/// name of the open directory, so symlinks on the way count as what they
/// lead to).
fn depth_beneath(root: &Dir, dir: &Dir) -> std::io::Result<usize> {
    let real = |d: &Dir| fs::read_link(format!("/proc/self/fd/{}", d.as_raw_fd()));
    let (root_path, dir_path) = (real(root)?, real(dir)?);
    dir_path
        .strip_prefix(&root_path)
        .map(|rest| rest.components().count())
        .map_err(|_| escaping_link(&dir_path.to_string_lossy()))
}

/// What `stat` reports, from either kind of metadata.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// `symlink`, `dir`, `file`, `fifo`, `socket`, `device` or `other`.
    pub kind: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links.
    pub nlink: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Access time.
    pub atime: (i64, i64),
    /// Change time.
    pub ctime: (i64, i64),
}

fn kind_of(mode: u32) -> &'static str {
    match mode & nix::libc::S_IFMT {
        nix::libc::S_IFLNK => "symlink",
        nix::libc::S_IFDIR => "dir",
        nix::libc::S_IFREG => "file",
        nix::libc::S_IFIFO => "fifo",
        nix::libc::S_IFSOCK => "socket",
        nix::libc::S_IFBLK | nix::libc::S_IFCHR => "device",
        _ => "other",
    }
}

impl Stat {
    fn from_std(m: &Metadata) -> Stat {
        use std::os::unix::fs::MetadataExt;
        Stat {
            kind: kind_of(m.mode()),
            size: m.len(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            mtime: (m.mtime(), m.mtime_nsec()),
            atime: (m.atime(), m.atime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    fn from_cap(m: &cap_std::fs::Metadata) -> Stat {
        use cap_std::fs::MetadataExt;
        Stat {
            kind: kind_of(m.mode()),
            size: m.len(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            mtime: (m.mtime(), m.mtime_nsec()),
            atime: (m.atime(), m.atime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.kind == "file"
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == "dir"
    }
}

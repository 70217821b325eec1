//! Restoring a fragment's tree to a directory, for inspection and tests.
//! The server never does this; it reads fragments in place.

use crate::error::{Error, Result};
use crate::meta::{Body, Kind};
use crate::read::Fragment;
use nix::fcntl::AtFlags;
use nix::sys::stat::{mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn nix_err(path: &Path, op: &'static str) -> impl FnOnce(nix::Error) -> Error {
    let path = path.to_owned();
    move |e| Error::Io {
        path,
        op,
        source: std::io::Error::from(e),
    }
}

/// Restores the tree of `frag` under `dir` (created if missing), with
/// contents, holes, modes, owners, mtimes (atime = mtime), xattrs, hard
/// links, symlinks, devices, fifos and sockets. Needs root for owners,
/// devices and `security.*`/`trusted.*` xattrs.
pub fn extract(frag: &Fragment, dir: &Path) -> Result<()> {
    let meta = frag.metadata();
    fs::create_dir_all(dir).map_err(Error::io(dir, "create directory"))?;
    let mut paths: Vec<Option<PathBuf>> = vec![None; meta.inodes.len()];
    paths[0] = Some(dir.to_owned());
    for (d, inode) in meta.inodes.iter().enumerate() {
        if inode.kind != Kind::Directory {
            continue;
        }
        let base = paths[d].clone().expect("parents precede children");
        for de in meta.children(d as u32) {
            let p = base.join(OsStr::from_bytes(meta.name(de)));
            let ino = de.inode as usize;
            if let Some(first) = &paths[ino] {
                fs::hard_link(first, &p).map_err(Error::io(&p, "hard link"))?;
                continue;
            }
            create(frag, de.inode, &p)?;
            if meta.inodes[ino].kind != Kind::Directory {
                apply(frag, de.inode, &p)?;
            }
            paths[ino] = Some(p);
        }
    }
    // Directories last, deepest first, so creating children does not
    // disturb their mtimes.
    for (d, inode) in meta.inodes.iter().enumerate().rev() {
        if inode.kind == Kind::Directory {
            apply(
                frag,
                d as u32,
                paths[d].as_ref().expect("every inode is reachable"),
            )?;
        }
    }
    Ok(())
}

fn create(frag: &Fragment, ino: u32, p: &Path) -> Result<()> {
    let meta = frag.metadata();
    let inode = meta.inode(ino);
    match &inode.body {
        Body::Directory { .. } => fs::create_dir(p).map_err(Error::io(p, "create directory")),
        Body::Regular { size, .. } => {
            let f = File::create(p).map_err(Error::io(p, "create"))?;
            let mut buf = vec![0u8; 1 << 20];
            for e in meta.extents_of(ino) {
                let mut done = 0;
                while done < e.len {
                    let n = (e.len - done).min(buf.len() as u64) as usize;
                    frag.read_region(e.region, e.region_offset + done, &mut buf[..n])?;
                    f.write_all_at(&buf[..n], e.file_offset + done)
                        .map_err(Error::io(p, "write"))?;
                    done += n as u64;
                }
            }
            f.set_len(*size).map_err(Error::io(p, "set length"))
        }
        Body::Symlink { target } => {
            std::os::unix::fs::symlink(OsStr::from_bytes(meta.str(*target)), p)
                .map_err(Error::io(p, "create symlink"))
        }
        Body::Device { major, minor } => {
            let kind = if inode.kind == Kind::CharDevice {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(
                p,
                kind,
                Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(*major as u64, *minor as u64),
            )
            .map_err(nix_err(p, "mknod"))
        }
        Body::Empty => {
            let kind = if inode.kind == Kind::Fifo {
                SFlag::S_IFIFO
            } else {
                SFlag::S_IFSOCK
            };
            mknod(p, kind, Mode::from_bits_truncate(0o600), 0).map_err(nix_err(p, "mknod"))
        }
    }
}

fn apply(frag: &Fragment, ino: u32, p: &Path) -> Result<()> {
    let meta = frag.metadata();
    let inode = meta.inode(ino);
    // Order matters: chown strips security.capability and set-id bits,
    // so it goes first; an ACL xattr rewrites the mode, so chmod goes after.
    fchownat(
        None,
        p,
        Some(Uid::from_raw(inode.uid)),
        Some(Gid::from_raw(inode.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(nix_err(p, "chown"))?;
    for (n, v) in meta.xattrs_of(ino) {
        xattr::set(p, OsStr::from_bytes(n), v).map_err(Error::io(p, "set xattr"))?;
    }
    if inode.kind != Kind::Symlink {
        fs::set_permissions(p, fs::Permissions::from_mode(inode.perm as u32))
            .map_err(Error::io(p, "chmod"))?;
    }
    let t = TimeSpec::new(inode.mtime.sec, inode.mtime.nsec as i64);
    utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(nix_err(p, "set times"))
}

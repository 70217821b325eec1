//! Merging N fragments into one namespace (see the crate doc for the rules).
//!
//! INTERFACE (fixed; the ext4 generator consumes it):
//! - `Merged::fragments` are sorted by `Fragment::id()`, so the result does
//!   not depend on the manifest's order; `FragIdx` indexes this list.
//! - `Merged::nodes[0]` is the root directory. Nodes are numbered breadth
//!   first with entries in name-byte order. One node per inode: hard links
//!   within a fragment share a node.
//! - A directory's entries are `entries[first_entry .. first_entry + entry_count]`,
//!   sorted by name bytes, unique.

use fragments::{Fragment, Kind, Timestamp};
use std::sync::Arc;

/// Index into `Merged::fragments`.
pub type FragIdx = u16;

/// Where a node's security xattrs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrSource {
    /// No xattrs.
    None,
    /// The xattrs of inode `ino` of fragment `frag`.
    Inode { frag: FragIdx, ino: u32 },
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Directories: the newest mtime among the fragments providing it.
    pub mtime: Timestamp,
    pub xattrs: XattrSource,
    /// Non-directories: the fragment inode providing content (regular file
    /// extents and size, symlink target, device numbers). Directories: None.
    pub source: Option<(FragIdx, u32)>,
    /// Directories: their entries (see module doc). Others: 0, 0.
    pub first_entry: u32,
    pub entry_count: u32,
    /// Link count as ext4 wants it: non-directories = number of entries
    /// naming the node; directories = 2 + subdirectories.
    pub nlink: u32,
    /// The directory holding the node's first entry (root: 0).
    pub parent: u32,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: Vec<u8>,
    pub node: u32,
}

/// The merged tree.
pub struct Merged {
    pub fragments: Vec<Arc<Fragment>>,
    pub nodes: Vec<Node>,
    pub entries: Vec<Entry>,
}

impl Merged {
    pub fn entries_of(&self, node: u32) -> &[Entry] {
        let n = &self.nodes[node as usize];
        &self.entries[n.first_entry as usize..(n.first_entry + n.entry_count) as usize]
    }
    /// The xattrs of a node, as (name, value) pairs sorted by name.
    pub fn xattrs_of(&self, node: u32) -> Vec<(&[u8], &[u8])> {
        match self.nodes[node as usize].xattrs {
            XattrSource::None => Vec::new(),
            XattrSource::Inode { frag, ino } => self.fragments[frag as usize]
                .metadata()
                .xattrs_of(ino)
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// The merge.
//
// One pass, breadth first over the merged tree. Each merged directory keeps
// the list of fragment directories providing it (a range of one flat
// vector); its entries are the k-way merge of their sorted entry lists, so
// nodes and entries come out numbered exactly as the interface says with no
// sorting and no per-node allocation but the entry names. Hard-linked
// inodes (nlink > 1 in their fragment) go through a small map so their
// names share one node.

use crate::error::{Error, Result};
use fragments::{Body, Metadata};
use std::collections::HashMap;
use std::path::PathBuf;

/// Why two fragments cannot be merged at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictKind {
    /// Both provide the path and at least one of them as a non-directory.
    Overlap,
    /// Both own the directory's security (mode, owner, xattrs) and disagree.
    Security,
}

impl ConflictKind {
    pub fn name(self) -> &'static str {
        match self {
            ConflictKind::Overlap => "overlap",
            ConflictKind::Security => "security",
        }
    }
}

/// One fragment's side of a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictSide {
    /// Index into the merge's sorted fragment list.
    pub index: FragIdx,
    /// The fragment file.
    pub file: PathBuf,
    /// The fragment's header name and version.
    pub name: String,
    pub version: String,
    /// What this fragment has at the path.
    pub kind: Kind,
}

/// Two fragments that cannot both provide `path` as they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Absolute path in the merged tree (bytes: names need not be UTF-8).
    pub path: Vec<u8>,
    pub kind: ConflictKind,
    /// `a` comes first in the sorted fragment list.
    pub a: ConflictSide,
    pub b: ConflictSide,
    /// What differs, for people: "file vs directory", "mode 0755 vs 0700".
    pub detail: String,
}

impl Conflict {
    /// The path for display (non-UTF-8 bytes escaped).
    pub fn path_display(&self) -> String {
        String::from_utf8(self.path.clone())
            .unwrap_or_else(|_| self.path.escape_ascii().to_string())
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = (&self.a, &self.b);
        match self.kind {
            ConflictKind::Overlap => write!(
                f,
                "{}: provided by both {} (fragment {:?}, {}) and {} (fragment {:?}, {})",
                self.path_display(),
                a.file.display(),
                a.name,
                kind_name(a.kind),
                b.file.display(),
                b.name,
                kind_name(b.kind),
            ),
            ConflictKind::Security => write!(
                f,
                "{}: owned by both {} (fragment {:?}) and {} (fragment {:?}), which disagree: {}",
                self.path_display(),
                a.file.display(),
                a.name,
                b.file.display(),
                b.name,
                self.detail,
            ),
        }
    }
}

/// A merge that found conflicts still yields a tree, for reports: see
/// [`merge_report`].
pub struct MergeReport {
    pub merged: Merged,
    /// Every conflict, in breadth-first order of their paths.
    pub conflicts: Vec<Conflict>,
}

/// Merges fragments into one namespace; any conflict is an error listing
/// all of them ([`Error::Conflicts`]).
pub fn merge(fragments: Vec<Arc<Fragment>>) -> Result<Merged> {
    let r = merge_report(fragments)?;
    if r.conflicts.is_empty() {
        Ok(r.merged)
    } else {
        Err(Error::Conflicts(r.conflicts))
    }
}

/// Merges fragments and returns the tree together with every conflict.
///
/// Rules (the crate doc has the why):
/// - The fragments are sorted by [`Fragment::id`]; two with the same id are
///   an error ([`Error::SameFragment`]). Nothing else depends on the order.
/// - A path provided by several fragments is fine if all provide a
///   directory; otherwise every pair of them of which one at least is not
///   a directory is an [`ConflictKind::Overlap`] conflict.
/// - A directory's mode, owner and xattrs come from the fragments owning it
///   ([`fragments::Inode::owns_security`]); owners must agree (perm, uid,
///   gid, xattr names and values byte for byte), or every pair of owners
///   that differ is a [`ConflictKind::Security`] conflict. A directory
///   nobody owns inherits its parent's (so its nearest owned ancestor's);
///   an unowned root is root:root 0755 without xattrs. Its mtime is the
///   newest among its providers.
/// - A non-directory takes everything from its one fragment inode; its
///   xattrs are [`XattrSource::None`] when it has none.
///
/// When there are conflicts, the tree is a best effort for reports only
/// (counts, listings): where directories and non-directories clash the
/// directories are kept (so conflicts below them are found too), where
/// only non-directories clash the first fragment's is kept, and the first
/// owner's security is used.
pub fn merge_report(fragments: Vec<Arc<Fragment>>) -> Result<MergeReport> {
    if fragments.len() > FragIdx::MAX as usize {
        return Err(Error::TooManyFragments(fragments.len()));
    }
    let mut keyed: Vec<([u8; 32], Arc<Fragment>)> =
        fragments.into_iter().map(|f| (f.id(), f)).collect();
    keyed.sort_by_key(|k| k.0);
    for w in keyed.windows(2) {
        if w[0].0 == w[1].0 {
            return Err(Error::SameFragment {
                a: w[0].1.path().to_owned(),
                b: w[1].1.path().to_owned(),
                id: fragments::keys::key_id(&w[0].0),
            });
        }
    }
    let fragments: Vec<Arc<Fragment>> = keyed.into_iter().map(|(_, f)| f).collect();
    let (nodes, entries, conflicts) = {
        let metas: Vec<&Metadata> = fragments.iter().map(|f| f.metadata()).collect();
        let total_inodes: u64 = metas.iter().map(|m| m.inodes.len() as u64).sum();
        let total_entries: u64 = metas.iter().map(|m| m.dentries.len() as u64).sum();
        if total_inodes >= u32::MAX as u64 {
            return Err(Error::TooLarge("nodes"));
        }
        if total_entries >= u32::MAX as u64 {
            return Err(Error::TooLarge("entries"));
        }
        let mut m = Merger {
            frags: &fragments,
            metas: &metas,
            nodes: Vec::with_capacity(total_inodes as usize),
            entries: Vec::with_capacity(total_entries as usize),
            providers: Vec::new(),
            dirs: Vec::new(),
            links: HashMap::new(),
            conflicts: Vec::new(),
        };
        m.run();
        (m.nodes, m.entries, m.conflicts)
    };
    Ok(MergeReport {
        merged: Merged {
            fragments,
            nodes,
            entries,
        },
        conflicts,
    })
}

/// A merged directory waiting for (or done with) its entries.
#[derive(Clone, Copy)]
struct DirRec {
    node: u32,
    /// The entry naming it (root: u32::MAX).
    name_entry: u32,
    /// Its providers: `providers[prov_start..prov_start + prov_len]`.
    prov_start: u32,
    prov_len: u32,
}

/// A position in one provider's entry list during the k-way merge.
#[derive(Clone, Copy)]
struct Cursor {
    frag: FragIdx,
    pos: u32,
    end: u32,
}

struct Merger<'a> {
    frags: &'a [Arc<Fragment>],
    metas: &'a [&'a Metadata],
    nodes: Vec<Node>,
    entries: Vec<Entry>,
    providers: Vec<(FragIdx, u32)>,
    /// Directories in node order (so binary-searchable by node).
    dirs: Vec<DirRec>,
    links: HashMap<(FragIdx, u32), u32>,
    conflicts: Vec<Conflict>,
}

fn name_at<'m>(metas: &[&'m Metadata], c: &Cursor) -> &'m [u8] {
    let m = metas[c.frag as usize];
    m.name(&m.dentries[c.pos as usize])
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Regular => "file",
        Kind::Directory => "directory",
        Kind::Symlink => "symlink",
        Kind::CharDevice => "character device",
        Kind::BlockDevice => "block device",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
    }
}

impl Merger<'_> {
    fn run(&mut self) {
        // The root: every fragment's inode 0.
        let n = self.frags.len() as FragIdx;
        self.providers.extend((0..n).map(|f| (f, 0u32)));
        let root = self.new_dir(0, n as u32, 0, None, u32::MAX);
        debug_assert_eq!(root, 0);

        let mut cursors: Vec<Cursor> = Vec::new();
        let mut group: Vec<(FragIdx, u32)> = Vec::new();
        let mut di = 0;
        while di < self.dirs.len() {
            let d = self.dirs[di];
            di += 1;
            let first_entry = self.entries.len() as u32;
            let mut subdirs = 0u32;
            cursors.clear();
            for &(f, ino) in
                &self.providers[d.prov_start as usize..(d.prov_start + d.prov_len) as usize]
            {
                if let Body::Directory { entries } = &self.metas[f as usize].inode(ino).body {
                    if !entries.is_empty() {
                        cursors.push(Cursor {
                            frag: f,
                            pos: entries.start,
                            end: entries.end,
                        });
                    }
                }
            }
            let metas = self.metas;
            let name_at = |c: &Cursor| name_at(metas, c);
            while !cursors.is_empty() {
                // The smallest name among the heads, and every head with it.
                group.clear();
                let name: &[u8] = if cursors.len() == 1 {
                    let c = &mut cursors[0];
                    let name = name_at(c);
                    group.push((
                        c.frag,
                        metas[c.frag as usize].dentries[c.pos as usize].inode,
                    ));
                    c.pos += 1;
                    name
                } else {
                    let mut min = name_at(&cursors[0]);
                    for c in &cursors[1..] {
                        let n = name_at(c);
                        if n < min {
                            min = n;
                        }
                    }
                    for c in cursors.iter_mut() {
                        if name_at(c) == min {
                            group.push((
                                c.frag,
                                metas[c.frag as usize].dentries[c.pos as usize].inode,
                            ));
                            c.pos += 1;
                        }
                    }
                    min
                };
                cursors.retain(|c| c.pos < c.end);
                if self.add_entry(d, name, &group) {
                    subdirs += 1;
                }
            }
            let node = &mut self.nodes[d.node as usize];
            node.first_entry = first_entry;
            node.entry_count = self.entries.len() as u32 - first_entry;
            node.nlink = 2 + subdirs;
        }
    }

    /// Adds the entry `name` of directory `d` provided by `group` (fragment,
    /// inode), sorted by fragment. Returns true if it is a directory.
    fn add_entry(&mut self, d: DirRec, name: &[u8], group: &[(FragIdx, u32)]) -> bool {
        let entry = self.entries.len() as u32;
        let metas = self.metas;
        let kind_of = |&(f, ino): &(FragIdx, u32)| metas[f as usize].inode(ino).kind;
        let node = if group.len() == 1 {
            let (f, ino) = group[0];
            if kind_of(&group[0]) == Kind::Directory {
                let start = self.providers.len() as u32;
                self.providers.push((f, ino));
                self.new_dir(start, 1, d.node, Some((d, name)), entry)
            } else {
                self.file_node(f, ino, d.node)
            }
        } else {
            let n_dirs = group
                .iter()
                .filter(|p| kind_of(p) == Kind::Directory)
                .count();
            if n_dirs < group.len() {
                // Overlap: every pair of providers of which at least one
                // is not a directory.
                for j in 1..group.len() {
                    let kj = kind_of(&group[j]);
                    for i in 0..j {
                        let ki = kind_of(&group[i]);
                        if ki == Kind::Directory && kj == Kind::Directory {
                            continue;
                        }
                        let detail = if ki == kj {
                            format!("{} in both", kind_name(ki))
                        } else {
                            format!("{} vs {}", kind_name(ki), kind_name(kj))
                        };
                        let path = self.child_path(d, name);
                        self.conflict(path, ConflictKind::Overlap, group[i], group[j], detail);
                    }
                }
            }
            if n_dirs > 0 {
                let start = self.providers.len() as u32;
                for p in group {
                    if kind_of(p) == Kind::Directory {
                        self.providers.push(*p);
                    }
                }
                self.new_dir(start, n_dirs as u32, d.node, Some((d, name)), entry)
            } else {
                self.file_node(group[0].0, group[0].1, d.node)
            }
        };
        let is_dir = self.nodes[node as usize].kind == Kind::Directory;
        if !is_dir {
            self.nodes[node as usize].nlink += 1;
        }
        self.entries.push(Entry {
            name: name.to_vec(),
            node,
        });
        is_dir
    }

    /// The node of a non-directory inode (shared by its hard links).
    fn file_node(&mut self, f: FragIdx, ino: u32, parent: u32) -> u32 {
        let m = self.metas[f as usize];
        let linked = m.nlink[ino as usize] > 1;
        if linked {
            if let Some(&n) = self.links.get(&(f, ino)) {
                return n;
            }
        }
        let i = m.inode(ino);
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            kind: i.kind,
            perm: i.perm,
            uid: i.uid,
            gid: i.gid,
            mtime: i.mtime,
            xattrs: if i.xattrs.is_empty() {
                XattrSource::None
            } else {
                XattrSource::Inode { frag: f, ino }
            },
            source: Some((f, ino)),
            first_entry: 0,
            entry_count: 0,
            nlink: 0,
            parent,
        });
        if linked {
            self.links.insert((f, ino), id);
        }
        id
    }

    /// Creates a directory node provided by `providers[start..start + len]`;
    /// `at` is (parent directory, name), None for the root.
    fn new_dir(
        &mut self,
        start: u32,
        len: u32,
        parent: u32,
        at: Option<(DirRec, &[u8])>,
        name_entry: u32,
    ) -> u32 {
        let provs = start as usize..(start + len) as usize;
        let mut mtime = Timestamp {
            sec: i64::MIN,
            nsec: 0,
        };
        let mut owner: Option<(FragIdx, u32)> = None;
        for k in provs.clone() {
            let (f, ino) = self.providers[k];
            let i = self.metas[f as usize].inode(ino);
            mtime = mtime.max(i.mtime);
            if !i.owns_security {
                continue;
            }
            if owner.is_none() {
                owner = Some((f, ino));
                continue;
            }
            // Every pair of owners that disagree (not only against the
            // first: the report must not depend on the sorted order).
            for e in provs.start..k {
                let o = self.providers[e];
                if !self.metas[o.0 as usize].inode(o.1).owns_security {
                    continue;
                }
                if let Some(detail) = self.security_difference(o, (f, ino)) {
                    let path = match at {
                        Some((d, name)) => self.child_path(d, name),
                        None => b"/".to_vec(),
                    };
                    self.conflict(path, ConflictKind::Security, o, (f, ino), detail);
                }
            }
        }
        if len == 0 {
            // Only an empty fragment list gives a provider-less (root) directory.
            mtime = Timestamp::default();
        }
        let (perm, uid, gid, xattrs) = match owner {
            Some((f, ino)) => {
                let i = self.metas[f as usize].inode(ino);
                let x = if i.xattrs.is_empty() {
                    XattrSource::None
                } else {
                    XattrSource::Inode { frag: f, ino }
                };
                (i.perm, i.uid, i.gid, x)
            }
            None if at.is_none() => (0o755, 0, 0, XattrSource::None),
            None => {
                let p = &self.nodes[parent as usize];
                (p.perm, p.uid, p.gid, p.xattrs)
            }
        };
        let id = self.nodes.len() as u32;
        self.nodes.push(Node {
            kind: Kind::Directory,
            perm,
            uid,
            gid,
            mtime,
            xattrs,
            source: None,
            first_entry: 0,
            entry_count: 0,
            nlink: 2,
            parent,
        });
        self.dirs.push(DirRec {
            node: id,
            name_entry,
            prov_start: start,
            prov_len: len,
        });
        id
    }

    /// None if two owning inodes agree on mode, owner and xattrs.
    fn security_difference(&self, a: (FragIdx, u32), b: (FragIdx, u32)) -> Option<String> {
        let (ma, mb) = (self.metas[a.0 as usize], self.metas[b.0 as usize]);
        let (ia, ib) = (ma.inode(a.1), mb.inode(b.1));
        let mut what = Vec::new();
        if ia.perm != ib.perm {
            what.push(format!("mode {:04o} vs {:04o}", ia.perm, ib.perm));
        }
        if (ia.uid, ia.gid) != (ib.uid, ib.gid) {
            what.push(format!(
                "owner {}:{} vs {}:{}",
                ia.uid, ia.gid, ib.uid, ib.gid
            ));
        }
        if !ma.xattrs_of(a.1).eq(mb.xattrs_of(b.1)) {
            what.push("xattrs differ".into());
        }
        (!what.is_empty()).then(|| what.join(", "))
    }

    fn conflict(
        &mut self,
        path: Vec<u8>,
        kind: ConflictKind,
        a: (FragIdx, u32),
        b: (FragIdx, u32),
        detail: String,
    ) {
        let side = |(f, ino): (FragIdx, u32)| {
            let fr = &self.frags[f as usize];
            ConflictSide {
                index: f,
                file: fr.path().to_owned(),
                name: fr.header().name.clone(),
                version: fr.header().version.clone(),
                kind: self.metas[f as usize].inode(ino).kind,
            }
        };
        let (a, b) = (side(a), side(b));
        self.conflicts.push(Conflict {
            path,
            kind,
            a,
            b,
            detail,
        });
    }

    /// The merged path of `name` inside directory `d`.
    fn child_path(&self, d: DirRec, name: &[u8]) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = vec![name];
        let mut cur = d;
        while cur.name_entry != u32::MAX {
            parts.push(&self.entries[cur.name_entry as usize].name);
            let parent = self.nodes[cur.node as usize].parent;
            let k = self
                .dirs
                .binary_search_by_key(&parent, |r| r.node)
                .expect("every directory has a record");
            cur = self.dirs[k];
        }
        let mut out = Vec::new();
        for p in parts.iter().rev() {
            out.push(b'/');
            out.extend_from_slice(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fragments::{BuildOptions, SigningKey, Trust};
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    /// Builds a fragment from `files` (paths ending in `/` are directories;
    /// `a=>b` makes `a` a hard link to `b`), owning `owns`.
    fn frag(dir: &Path, name: &str, files: &[&str], owns: &[&str]) -> Arc<Fragment> {
        let tree = dir.join(format!("{name}.tree"));
        fs::create_dir_all(&tree).unwrap();
        for f in files {
            if let Some((link, target)) = f.split_once("=>") {
                let l = tree.join(link);
                fs::create_dir_all(l.parent().unwrap()).unwrap();
                fs::hard_link(tree.join(target), l).unwrap();
            } else if let Some(d) = f.strip_suffix('/') {
                fs::create_dir_all(tree.join(d)).unwrap();
            } else {
                let p = tree.join(f);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, f.as_bytes()).unwrap();
            }
        }
        let out = dir.join(format!("{name}.frag"));
        let key = SigningKey::from_bytes(&[9; 32]);
        let opts = BuildOptions {
            name: name.into(),
            owns: owns.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        fragments::build(&tree, &out, &key, &opts, &fragments::NoProgress).unwrap();
        Arc::new(Fragment::open(&out, Trust::Keys(&[key.verifying_key()])).unwrap())
    }

    /// Every path of the merged tree with its node, breadth first.
    fn paths(m: &Merged) -> Vec<(String, u32)> {
        let mut out = vec![("/".to_string(), 0)];
        let mut i = 0;
        while i < out.len() {
            let (p, n) = out[i].clone();
            i += 1;
            if m.nodes[n as usize].kind != Kind::Directory {
                continue;
            }
            for e in m.entries_of(n) {
                let base = if p == "/" { String::new() } else { p.clone() };
                out.push((
                    format!("{base}/{}", String::from_utf8_lossy(&e.name)),
                    e.node,
                ));
            }
        }
        out
    }

    fn node<'a>(m: &'a Merged, path: &str) -> &'a Node {
        let n = paths(m)
            .into_iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{path} missing"))
            .1;
        &m.nodes[n as usize]
    }

    /// Checks the interface invariants of a merged tree.
    fn check_invariants(m: &Merged) {
        let mut seen_dir_entries = 0u32;
        let mut next_node = 1u32;
        let mut names_of = vec![0u32; m.nodes.len()];
        for (i, n) in m.nodes.iter().enumerate() {
            if n.kind != Kind::Directory {
                assert!(n.source.is_some());
                continue;
            }
            assert_eq!(n.first_entry, seen_dir_entries, "node {i}");
            seen_dir_entries += n.entry_count;
            let es = m.entries_of(i as u32);
            assert!(es.windows(2).all(|w| w[0].name < w[1].name));
            let mut subdirs = 0;
            for e in es {
                let c = &m.nodes[e.node as usize];
                names_of[e.node as usize] += 1;
                if c.kind == Kind::Directory {
                    subdirs += 1;
                    assert_eq!(c.parent, i as u32);
                }
                // Breadth first: a node first seen gets the next number.
                if e.node >= next_node {
                    assert_eq!(e.node, next_node);
                    next_node += 1;
                    assert_eq!(c.parent, i as u32);
                }
            }
            assert_eq!(n.nlink, 2 + subdirs);
        }
        assert_eq!(seen_dir_entries as usize, m.entries.len());
        assert_eq!(next_node as usize, m.nodes.len());
        for (i, n) in m.nodes.iter().enumerate().skip(1) {
            if n.kind != Kind::Directory {
                assert_eq!(n.nlink, names_of[i]);
            } else {
                assert_eq!(names_of[i], 1);
            }
        }
    }

    #[test]
    fn disjoint_files_shared_directories_any_order() {
        let t = tempfile::tempdir().unwrap();
        let a = frag(t.path(), "a", &["etc/a.conf", "usr/bin/a", "x/"], &[]);
        let b = frag(
            t.path(),
            "b",
            &["etc/b.conf", "usr/lib/b.so", "usr/bin/b"],
            &[],
        );
        let c = frag(t.path(), "c", &["opt/c/c", "usr/bin/c"], &[]);
        let m1 = merge(vec![a.clone(), b.clone(), c.clone()]).unwrap();
        let m2 = merge(vec![c, a, b]).unwrap();
        check_invariants(&m1);
        let show = |m: &Merged| format!("{:?}{:?}", m.nodes, m.entries);
        assert_eq!(show(&m1), show(&m2));
        let got: Vec<String> = paths(&m1).into_iter().map(|p| p.0).collect();
        assert_eq!(
            got,
            [
                "/",
                "/etc",
                "/opt",
                "/usr",
                "/x",
                "/etc/a.conf",
                "/etc/b.conf",
                "/opt/c",
                "/usr/bin",
                "/usr/lib",
                "/opt/c/c",
                "/usr/bin/a",
                "/usr/bin/b",
                "/usr/bin/c",
                "/usr/lib/b.so"
            ]
        );
        // Content comes from the providing fragment.
        let n = node(&m1, "/usr/bin/b");
        let (f, ino) = n.source.unwrap();
        let fr = &m1.fragments[f as usize];
        assert_eq!(fr.header().name, "b");
        assert_eq!(fr.metadata().path_of(ino), b"/usr/bin/b");
        // Fragments sorted by id.
        assert!(m1.fragments.windows(2).all(|w| w[0].id() < w[1].id()));
    }

    #[test]
    fn every_conflict_is_found_with_paths() {
        let t = tempfile::tempdir().unwrap();
        let a = frag(t.path(), "a", &["d/e/f/same", "d/x", "top", "ok/a"], &[]);
        let b = frag(
            t.path(),
            "b",
            &["d/e/f/same", "d/x/", "d/x/under", "ok/b"],
            &[],
        );
        let c = frag(
            t.path(),
            "c",
            &["d/e/f/same", "d/x/", "d/x/under", "top/"],
            &[],
        );
        let r = merge_report(vec![a, b, c]).unwrap();
        check_invariants(&r.merged);
        let mut got: Vec<(String, String, String)> = r
            .conflicts
            .iter()
            .map(|c| (c.path_display(), c.a.name.clone(), c.b.name.clone()))
            .collect();
        // Sides are in sorted-fragment order; normalize for the check.
        for g in &mut got {
            if g.1 > g.2 {
                std::mem::swap(&mut g.1, &mut g.2);
            }
        }
        got.sort();
        let want = [
            ("/d/e/f/same", "a", "b"),
            ("/d/e/f/same", "a", "c"),
            ("/d/e/f/same", "b", "c"),
            ("/d/x", "a", "b"),
            ("/d/x", "a", "c"),
            ("/d/x/under", "b", "c"),
            ("/top", "a", "c"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(p, a, b)| (p.to_string(), a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
        // The report tree keeps directories where they clash with files.
        assert_eq!(node(&r.merged, "/top").kind, Kind::Directory);
        assert_eq!(node(&r.merged, "/d/x").kind, Kind::Directory);
        // merge() refuses with all of them.
        let Err(Error::Conflicts(c)) = merge(r.merged.fragments.clone()) else {
            panic!("conflicts expected")
        };
        assert_eq!(c.len(), 7);
        let text = Error::Conflicts(c).to_string();
        assert!(text.starts_with("7 conflicts"), "{text}");
        assert!(text.contains("/d/x: provided by both "), "{text}");
        assert!(text.contains("(fragment \"a\", file)"), "{text}");
    }

    #[test]
    fn hard_links_share_a_node() {
        let t = tempfile::tempdir().unwrap();
        let a = frag(
            t.path(),
            "a",
            &["x/one", "y/two=>x/one", "y/three=>x/one", "z"],
            &[],
        );
        let b = frag(t.path(), "b", &["x/other"], &[]);
        let m = merge(vec![a, b]).unwrap();
        check_invariants(&m);
        let all = paths(&m);
        let id = |p: &str| all.iter().find(|x| x.0 == p).unwrap().1;
        assert_eq!(id("/x/one"), id("/y/two"));
        assert_eq!(id("/x/one"), id("/y/three"));
        let n = node(&m, "/x/one");
        assert_eq!(n.nlink, 3);
        assert_eq!(n.parent, id("/x"));
        assert_eq!(node(&m, "/z").nlink, 1);
        assert_eq!(node(&m, "/").nlink, 4);
    }

    #[test]
    fn security_top_down() {
        let t = tempfile::tempdir().unwrap();
        let chmod =
            |p: &Path, mode: u32| fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        // a owns /srv (0750, 7:8) but not /srv/sub; b provides both, owns nothing.
        let ta = t.path().join("a.tree");
        fs::create_dir_all(ta.join("srv/sub")).unwrap();
        chmod(&ta.join("srv"), 0o750);
        chmod(&ta.join("srv/sub"), 0o700);
        std::os::unix::fs::chown(ta.join("srv"), Some(7), Some(8)).unwrap();
        let a = frag(t.path(), "a", &["srv/sub/a"], &["/srv"]);
        // /srv/sub is owned by a too (owns covers the subtree): take it off
        // by building b, which owns only /other.
        let tb = t.path().join("b.tree");
        fs::create_dir_all(tb.join("srv/sub/deeper")).unwrap();
        fs::create_dir_all(tb.join("other")).unwrap();
        chmod(&tb.join("srv"), 0o777);
        chmod(&tb.join("srv/sub/deeper"), 0o777);
        let b = frag(t.path(), "b", &["srv/sub/deeper/b"], &["/other"]);
        let m = merge(vec![a.clone(), b.clone()]).unwrap();
        check_invariants(&m);
        let root = node(&m, "/");
        assert_eq!((root.perm, root.uid, root.gid), (0o755, 0, 0));
        assert_eq!(root.xattrs, XattrSource::None);
        let srv = node(&m, "/srv");
        assert_eq!((srv.perm, srv.uid, srv.gid), (0o750, 7, 8));
        // Owned by a (owns covers the subtree): its own mode.
        let sub = node(&m, "/srv/sub");
        assert_eq!(sub.perm, 0o700);
        // Provided only by b, which does not own it: inherits from /srv/sub.
        let deeper = node(&m, "/srv/sub/deeper");
        assert_eq!((deeper.perm, deeper.uid, deeper.gid), (0o700, 0, 0));

        // Two owners that agree.
        let c = frag(t.path(), "c", &["srv/sub/c"], &["/srv"]);
        let tc = t.path().join("c.tree");
        chmod(&tc.join("srv"), 0o750);
        chmod(&tc.join("srv/sub"), 0o700);
        std::os::unix::fs::chown(tc.join("srv"), Some(7), Some(8)).unwrap();
        let c = {
            drop(c);
            let out = t.path().join("c.frag");
            let key = SigningKey::from_bytes(&[9; 32]);
            let opts = BuildOptions {
                name: "c".into(),
                owns: vec!["/srv".into()],
                ..Default::default()
            };
            fragments::build(&tc, &out, &key, &opts, &fragments::NoProgress).unwrap();
            Arc::new(Fragment::open(&out, Trust::Keys(&[key.verifying_key()])).unwrap())
        };
        let m = merge(vec![a.clone(), c.clone(), b.clone()]).unwrap();
        assert_eq!(node(&m, "/srv").perm, 0o750);

        // Two owners that differ: one conflict per differing directory.
        chmod(&tc.join("srv"), 0o755);
        let out = t.path().join("c2.frag");
        let key = SigningKey::from_bytes(&[9; 32]);
        let opts = BuildOptions {
            name: "c2".into(),
            owns: vec!["/srv".into()],
            ..Default::default()
        };
        fragments::build(&tc, &out, &key, &opts, &fragments::NoProgress).unwrap();
        let c2 = Arc::new(Fragment::open(&out, Trust::Keys(&[key.verifying_key()])).unwrap());
        let r = merge_report(vec![a, c2, b]).unwrap();
        assert_eq!(r.conflicts.len(), 1, "{:?}", r.conflicts);
        let c = &r.conflicts[0];
        assert_eq!(c.kind, ConflictKind::Security);
        assert_eq!(c.path, b"/srv");
        assert!(c.detail.contains("mode"), "{}", c.detail);
    }

    #[test]
    fn no_fragments_is_an_empty_root() {
        let m = merge(Vec::new()).unwrap();
        assert_eq!(m.nodes.len(), 1);
        assert!(m.entries.is_empty());
        let r = &m.nodes[0];
        assert_eq!((r.perm, r.uid, r.gid, r.nlink), (0o755, 0, 0, 2));
        assert_eq!(r.mtime, Timestamp::default());
    }

    #[test]
    fn same_fragment_twice_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let a = frag(t.path(), "a", &["f"], &[]);
        let copy = t.path().join("copy.frag");
        fs::copy(a.path(), &copy).unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let b = Arc::new(Fragment::open(&copy, Trust::Keys(&[key.verifying_key()])).unwrap());
        assert!(matches!(merge(vec![a, b]), Err(Error::SameFragment { .. })));
    }

    #[test]
    fn directory_mtime_is_the_newest() {
        let t = tempfile::tempdir().unwrap();
        let set = |p: &Path, s: u64| {
            let f = fs::File::open(p).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
                .unwrap();
        };
        for (n, s) in [("a", 1000u64), ("b", 3000), ("c", 2000)] {
            let tree = t.path().join(format!("{n}.tree"));
            fs::create_dir_all(tree.join("d")).unwrap();
            fs::write(tree.join("d").join(n), b"x").unwrap();
            set(&tree.join("d"), s);
            set(&tree, s + 1);
        }
        let fs_: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|n| frag(t.path(), n, &[], &[]))
            .collect();
        let m = merge(fs_).unwrap();
        assert_eq!(node(&m, "/d").mtime.sec, 3000);
        assert_eq!(node(&m, "/").mtime.sec, 3001);
    }
}

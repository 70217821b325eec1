//! Merging N fragments into one namespace (see the crate doc for the rules).
//!
//! One pass, breadth first over the merged tree. Each merged directory keeps
//! the list of fragment directories providing it (a range of one flat
//! vector); its entries are the k-way merge of their sorted entry lists, so
//! nodes and entries come out numbered exactly as the interface of the
//! merged tree (`tree`) says, with no sorting and no per-node allocation but
//! the entry names. Hard-linked inodes (nlink > 1 in their fragment) go
//! through a small map so their names share one node.

pub use crate::conflict::{Conflict, ConflictKind, ConflictSide};
pub use crate::tree::{Entry, FragIdx, Merged, Node, XattrSource};

use crate::conflict::kind_name;
use crate::error::{Error, Result};
use fragments::{Body, Fragment, Kind, Metadata, Timestamp};
use std::collections::HashMap;
use std::sync::Arc;

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
mod tests;

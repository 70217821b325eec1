//! A bounded cache of *verified* fragment blocks, shared by every volume of
//! a process that reads the same fragment.
//!
//! The cache holds bytes, not "this block was fine once" flags: a hit
//! copies bytes that were checked in memory, so nothing is ever re-read
//! from a file after its check. Keys name a block of a fragment region by
//! the fragment's identity (the hash of its signed header), so two exports
//! over the same fragment share entries.
//!
//! Layout: `SHARDS` shards, each a mutex over a hash index, an arena of
//! 4 KiB slots and a CLOCK hand. Blocks are assigned to shards by 16-block
//! group, so a 64 KiB run of a region takes one lock.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub const BLOCK: usize = 4096;
/// Blocks per shard group (and the largest run handled under one lock).
pub const GROUP: u64 = 16;
const SHARDS: usize = 64;
/// Slots per slab of slot memory (256 KiB).
const SLAB: usize = 64;

/// Identifies one region of one fragment (see [`source_key`]).
pub type SourceKey = u64;

/// The cache key of region `region` of the fragment with identity `id`.
pub fn source_key(id: &[u8; 32], region: u32) -> SourceKey {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    u64::from_le_bytes(b) ^ (u64::from(region) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// A multiply-xor hasher for the (u64, u64) keys: SipHash costs more than
/// the 4 KiB copy it guards.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
}

type Index = HashMap<(SourceKey, u64), u32, BuildHasherDefault<KeyHasher>>;

struct Shard {
    index: Index,
    keys: Vec<(SourceKey, u64)>,
    referenced: Vec<bool>,
    /// Slot memory in fixed slabs of `SLAB` slots: growing never copies
    /// what is cached (a doubling `Vec` would, under the shard lock).
    slabs: Vec<Box<[u8]>>,
    hand: usize,
    capacity: usize,
}

impl Shard {
    fn slot(&self, i: u32) -> &[u8] {
        let (s, k) = (i as usize / SLAB, i as usize % SLAB);
        &self.slabs[s][k * BLOCK..(k + 1) * BLOCK]
    }

    fn slot_mut(&mut self, i: u32) -> &mut [u8] {
        let (s, k) = (i as usize / SLAB, i as usize % SLAB);
        &mut self.slabs[s][k * BLOCK..(k + 1) * BLOCK]
    }

    /// A slot for a new entry: a fresh one while below capacity, else the
    /// first unreferenced one under the CLOCK hand (its entry is evicted).
    fn take_slot(&mut self) -> Option<(u32, bool)> {
        if self.capacity == 0 {
            return None;
        }
        if self.keys.len() < self.capacity {
            self.keys.push((0, 0));
            self.referenced.push(false);
            if self.keys.len() > self.slabs.len() * SLAB {
                self.slabs.push(vec![0u8; SLAB * BLOCK].into_boxed_slice());
            }
            return Some(((self.keys.len() - 1) as u32, true));
        }
        loop {
            let h = self.hand;
            self.hand = (self.hand + 1) % self.capacity;
            if self.referenced[h] {
                self.referenced[h] = false;
            } else {
                let old = self.keys[h];
                self.index.remove(&old);
                return Some((h as u32, false));
            }
        }
    }
}

/// Hit/miss counters, for logs and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub capacity_blocks: u64,
}

/// The shared verified-block cache.
pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Slots handed out so far (they are never returned).
    used: AtomicU64,
    capacity_blocks: u64,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("capacity_blocks", &self.capacity_blocks)
            .finish()
    }
}

impl BlockCache {
    /// A cache holding up to `bytes` of blocks (0 disables it). Memory is
    /// taken as entries arrive, not up front.
    pub fn new(bytes: u64) -> BlockCache {
        let per_shard = (bytes / BLOCK as u64).div_ceil(SHARDS as u64) as usize;
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    index: Index::default(),
                    keys: Vec::new(),
                    referenced: Vec::new(),
                    slabs: Vec::new(),
                    hand: 0,
                    capacity: per_shard,
                })
            })
            .collect();
        BlockCache {
            shards,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            used: AtomicU64::new(0),
            capacity_blocks: (per_shard * SHARDS) as u64,
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            capacity_blocks: self.capacity_blocks,
        }
    }

    /// Whether the cache still has never-used room (most shards do not
    /// need to evict yet): until then, even a scan may fill it.
    pub fn has_room(&self) -> bool {
        self.used.load(Ordering::Relaxed) + (SHARDS as u64 * SLAB as u64) < self.capacity_blocks
    }

    fn shard(&self, src: SourceKey, block: u64) -> &Mutex<Shard> {
        let g = (src ^ (block / GROUP).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .wrapping_mul(0xff51_afd7_ed55_8ccd);
        &self.shards[(g >> 58) as usize % SHARDS]
    }

    fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding the lock leaves a consistent shard (every
        // update is a single assignment), so poisoning is not fatal.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the cached blocks of `[first, first + n)` of `src` into `out`
    /// (`n` whole blocks) and marks them in `hit` (one flag per block).
    /// Returns how many hit.
    pub fn get(&self, src: SourceKey, first: u64, out: &mut [u8], hit: &mut [bool]) -> usize {
        let n = out.len() / BLOCK;
        if self.capacity_blocks == 0 {
            hit[..n].fill(false);
            self.misses.fetch_add(n as u64, Ordering::Relaxed);
            return 0;
        }
        let mut found = 0;
        let mut b = first;
        let end = first + n as u64;
        while b < end {
            let group_end = ((b / GROUP) + 1) * GROUP;
            let stop = group_end.min(end);
            let mut shard = Self::lock(self.shard(src, b));
            for k in b..stop {
                let i = (k - first) as usize;
                match shard.index.get(&(src, k)).copied() {
                    Some(slot) => {
                        out[i * BLOCK..(i + 1) * BLOCK].copy_from_slice(shard.slot(slot));
                        shard.referenced[slot as usize] = true;
                        hit[i] = true;
                        found += 1;
                    }
                    None => hit[i] = false,
                }
            }
            b = stop;
        }
        self.hits.fetch_add(found as u64, Ordering::Relaxed);
        self.misses.fetch_add((n - found) as u64, Ordering::Relaxed);
        found
    }

    /// Inserts verified blocks `[first, first + n)` of `src` (`data` holds
    /// `n` whole blocks). Only call with bytes that passed their check.
    pub fn insert(&self, src: SourceKey, first: u64, data: &[u8]) {
        if self.capacity_blocks == 0 {
            return;
        }
        let end = first + (data.len() / BLOCK) as u64;
        let mut b = first;
        while b < end {
            let stop = (((b / GROUP) + 1) * GROUP).min(end);
            let mut shard = Self::lock(self.shard(src, b));
            for k in b..stop {
                let i = (k - first) as usize;
                let bytes = &data[i * BLOCK..(i + 1) * BLOCK];
                let slot = match shard.index.get(&(src, k)).copied() {
                    Some(s) => s,
                    None => match shard.take_slot() {
                        Some((s, fresh)) => {
                            if fresh {
                                self.used.fetch_add(1, Ordering::Relaxed);
                            }
                            shard.index.insert((src, k), s);
                            shard.keys[s as usize] = (src, k);
                            s
                        }
                        None => return,
                    },
                };
                shard.slot_mut(slot).copy_from_slice(bytes);
            }
            b = stop;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(tag: u8) -> Vec<u8> {
        vec![tag; BLOCK]
    }

    #[test]
    fn hits_after_insert_and_bounded() {
        let c = BlockCache::new(64 * BLOCK as u64 * 4); // 4 slots per shard
        let src = source_key(&[7; 32], 1);
        let mut data = Vec::new();
        for t in 0..4u8 {
            data.extend(block(t));
        }
        c.insert(src, 100, &data);
        let mut out = vec![0u8; 4 * BLOCK];
        let mut hit = [false; 4];
        assert_eq!(c.get(src, 100, &mut out, &mut hit), 4);
        assert_eq!(out, data);
        // Another region of the same fragment does not alias.
        let other = source_key(&[7; 32], 2);
        assert_eq!(c.get(other, 100, &mut out, &mut hit), 0);
        assert_eq!(hit, [false; 4]);
        // Filling far beyond capacity evicts, never grows.
        for round in 0..500u64 {
            c.insert(src, 1000 + round * 4, &data);
        }
        let total: usize = c
            .shards
            .iter()
            .map(|s| BlockCache::lock(s).keys.len())
            .sum();
        assert!(total <= 256, "{total} entries for 256 slots");
        let hits = c.get(src, 1000 + 499 * 4, &mut out, &mut hit);
        assert_eq!(hits, 4, "the latest insert is cached");
    }

    #[test]
    fn room_runs_out_as_slots_are_used() {
        let c = BlockCache::new((SHARDS * SLAB * 4 * BLOCK) as u64);
        assert!(c.has_room());
        let src = source_key(&[3; 32], 0);
        let data = vec![5u8; 64 * BLOCK];
        for k in 0..(SHARDS * SLAB * 8 / 64) as u64 {
            c.insert(src, k * 64, &data);
        }
        assert!(!c.has_room(), "every slot was used");
        assert!(!BlockCache::new(0).has_room());
    }

    #[test]
    fn zero_capacity_caches_nothing() {
        let c = BlockCache::new(0);
        let src = source_key(&[1; 32], 0);
        c.insert(src, 0, &block(9));
        let mut out = vec![0u8; BLOCK];
        let mut hit = [true];
        assert_eq!(c.get(src, 0, &mut out, &mut hit), 0);
        assert!(!hit[0]);
    }
}

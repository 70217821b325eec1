//! The volume against the layout's own export (the reference bytes), with a
//! tampered fragment, and with an overlay that must persist.

use fragments::{BuildOptions, SigningKey};
use layout::ext4::Source;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use volume::{ErrorKind, OpenOptions, Shared, Volume};

const B: u64 = 4096;

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    manifest: PathBuf,
}

/// Two fragments (one raw, one zstd, file sizes that are not block
/// multiples, small files) and a manifest with an overlay.
fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_owned();
    let key = SigningKey::from_bytes(&[9; 32]);
    fragments::keys::write_keypair(&dir.join("lab.key"), &key, false).unwrap();
    for (name, zstd) in [("a", None), ("b", Some(3))] {
        let tree = dir.join(format!("tree-{name}"));
        let sub = tree.join(name);
        fs::create_dir_all(sub.join("deep")).unwrap();
        for i in 0..40u64 {
            let len = [10, 700, 4095, 4096, 5000, 70_000, 300_001][i as usize % 7];
            fs::write(
                sub.join(format!("f{i}")),
                noise(i + 100 * zstd.unwrap_or(0) as u64, len),
            )
            .unwrap();
        }
        fs::write(sub.join("deep/big"), noise(7, 3 << 20)).unwrap();
        let opts = BuildOptions {
            name: name.into(),
            version: "1".into(),
            zstd_level: zstd,
            ..BuildOptions::default()
        };
        fragments::build(
            &tree,
            &dir.join(format!("{name}.frag")),
            &key,
            &opts,
            &fragments::NoProgress,
        )
        .unwrap();
    }
    let manifest = dir.join("volume.toml");
    fs::write(
        &manifest,
        "name = \"t\"\nfragments = [\"a.frag\", \"b.frag\"]\ntrust = [\"lab.key.pub\"]\n\
         [filesystem]\nfree = \"8MiB\"\n[overlay]\npath = \"t.overlay\"\n",
    )
    .unwrap();
    Fixture {
        _dir: t,
        dir,
        manifest,
    }
}

fn read_only() -> OpenOptions {
    OpenOptions::default()
}

fn writable() -> OpenOptions {
    OpenOptions {
        overlay: true,
        discard_overlay: false,
    }
}

/// The reference image, written by the layout crate's exporter.
fn reference(v: &Volume, dir: &Path) -> Vec<u8> {
    let p = dir.join("ref.img");
    let f = fs::File::create(&p).unwrap();
    let l = v.layout();
    layout::ext4::export::write_image(&l.merged, &l.image, &f, &|_| {}).unwrap();
    fs::read(p).unwrap()
}

#[test]
fn reads_match_the_layout_export_aligned_or_not_cold_or_cached() {
    let fx = fixture();
    let shared = Shared::new(64 << 20);
    let v = Volume::open(&fx.manifest, &shared, read_only()).unwrap();
    assert!(v.read_only());
    let want = reference(&v, &fx.dir);
    assert_eq!(want.len() as u64, v.size());
    for pass in 0..2 {
        let mut got = vec![0u8; want.len()];
        for (i, c) in got.chunks_mut(1 << 20).enumerate() {
            v.read_at(i as u64 * (1 << 20), c).unwrap();
        }
        assert!(got == want, "pass {pass}: whole-volume read differs");
    }
    // Large reads are scans and do not fill the cache; small ones do.
    let before = v.cache_stats().hits;
    let mut small = vec![0u8; 16 * 4096];
    for pass in 0..2 {
        for k in 0..v.size() / small.len() as u64 {
            let off = k * small.len() as u64;
            v.read_at(off, &mut small).unwrap();
            assert_eq!(
                &small[..],
                &want[off as usize..off as usize + small.len()],
                "pass {pass}"
            );
        }
    }
    assert!(
        v.cache_stats().hits > before,
        "the second pass of small reads should hit the cache"
    );
    // Unaligned and odd-sized reads anywhere.
    let r = noise(1, 4000);
    for k in 0..500 {
        let off = u64::from_le_bytes(r[k * 8 % 3992..k * 8 % 3992 + 8].try_into().unwrap())
            % (v.size() - 9000);
        let len = 1 + (r[k % 4000] as usize * 37) % 9000;
        let mut buf = vec![0u8; len];
        v.read_at(off, &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &want[off as usize..off as usize + len],
            "read {len} at {off}"
        );
    }
    // Out of range.
    let mut buf = [0u8; 512];
    let e = v.read_at(v.size() - 100, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Invalid);
    // Without a cache, the same bytes.
    let v2 = Volume::open(&fx.manifest, &Shared::new(0), read_only()).unwrap();
    let mut got = vec![0u8; want.len()];
    v2.read_at(0, &mut got).unwrap();
    assert!(got == want);
}

#[test]
fn block_status_reports_the_maps_zeros() {
    let fx = fixture();
    let v = Volume::open(&fx.manifest, &Shared::new(0), read_only()).unwrap();
    let want = reference(&v, &fx.dir);
    let runs = v.block_status(0, v.size(), usize::MAX).unwrap();
    assert_eq!(runs.iter().map(|r| r.len).sum::<u64>(), v.size());
    let mut pos = 0usize;
    let mut zero_bytes = 0;
    for r in &runs {
        if r.zero {
            assert!(r.hole);
            assert!(
                want[pos..pos + r.len as usize].iter().all(|&b| b == 0),
                "run at {pos} said zero"
            );
            zero_bytes += r.len;
        }
        pos += r.len as usize;
    }
    assert!(
        zero_bytes >= 4 << 20,
        "the free space is zeros: {zero_bytes}"
    );
    // Unaligned start and a bounded answer.
    let one = v.block_status(4097, 10, 1).unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].len >= 1);
}

#[test]
fn a_tampered_block_fails_its_read_only() {
    let fx = fixture();
    // Find a volume block that comes from the raw fragment's data region.
    let shared = Shared::new(16 << 20);
    let v = Volume::open(&fx.manifest, &shared, read_only()).unwrap();
    let l = v.layout();
    let (frag, region, vblock, rblock) = l
        .image
        .map
        .iter()
        .find_map(|m| match m.source {
            Source::Fragment {
                frag,
                region,
                block,
            } if m.len > 3 => {
                let f = &l.merged.fragments[frag as usize];
                (f.chunk_size(region).is_none()).then_some((frag, region, m.start + 2, block + 2))
            }
            _ => None,
        })
        .expect("a raw data extent");
    let f = &l.merged.fragments[frag as usize];
    let path = f.path().to_owned();
    let at = f.region(region).unwrap().file_offset + rblock * B + 100;
    let mut good = vec![0u8; 3 * B as usize];
    v.read_at((vblock - 1) * B, &mut good).unwrap(); // cached now
    drop(v);
    // Flip one byte on disk, then serve from a fresh process-wide cache.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    let v = Volume::open(&fx.manifest, &Shared::new(16 << 20), read_only()).unwrap();
    let mut buf = vec![0xAAu8; 3 * B as usize];
    let e = v.read_at((vblock - 1) * B, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(e.volume_offset(), Some(vblock * B), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains(&format!("block {rblock}")),
        "{msg}"
    );
    assert!(
        buf.iter().all(|&b| b == 0),
        "nothing unverified is left in the buffer"
    );
    // The neighbours still read, and match what they were.
    let mut one = vec![0u8; B as usize];
    v.read_at((vblock - 1) * B, &mut one).unwrap();
    assert_eq!(one, good[..B as usize]);
    v.read_at((vblock + 1) * B, &mut one).unwrap();
    assert_eq!(one, good[2 * B as usize..]);
    // A file truncated under the volume: errors, no crash.
    let uncached = Volume::open(&fx.manifest, &Shared::new(0), read_only()).unwrap();
    file.set_len(at - 200).unwrap();
    let e = uncached.read_at((vblock + 1) * B, &mut one).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
}

#[test]
fn overlay_writes_persist_and_are_bound_to_the_volume() {
    let fx = fixture();
    let shared = Shared::new(8 << 20);
    let v = Volume::open(&fx.manifest, &shared, writable()).unwrap();
    assert!(!v.read_only());
    let mut img = reference(&v, &fx.dir);
    let size = v.size();
    let mut apply = |off: u64, data: &[u8]| {
        img[off as usize..off as usize + data.len()].copy_from_slice(data);
    };
    // Partial, unaligned, whole-block and straddling writes.
    let w = [
        (0u64, 100usize),
        (5000, 3000),
        (8192, 8192),
        (20_000, 70_000),
        (size - 10, 10),
    ];
    for (i, &(off, len)) in w.iter().enumerate() {
        let d = noise(1000 + i as u64, len);
        v.write_at(off, &d, i == 2).unwrap();
        apply(off, &d);
    }
    // Zeroing: holes, written zeros, a partial range.
    v.trim(200 * B, 10 * B, false).unwrap();
    apply(200 * B, &vec![0; 10 * B as usize]);
    v.write_zeroes(300 * B + 5, 3 * B, true, false, false)
        .unwrap();
    apply(300 * B + 5, &vec![0; 3 * B as usize]);
    v.write_zeroes(400 * B, 2 * B, false, false, false).unwrap();
    apply(400 * B, &vec![0; 2 * B as usize]);
    let e = v.write_zeroes(500 * B, B, false, true, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotSupported);
    let check = |v: &Volume, img: &[u8]| {
        let mut got = vec![0u8; img.len()];
        v.read_at(0, &mut got).unwrap();
        assert!(got == img, "overlay contents differ");
    };
    check(&v, &img);
    let st = v.block_status(200 * B, 10 * B, 16).unwrap();
    assert!(st[0].zero && st[0].len == 10 * B, "{st:?}");
    // Past the end: ENOSPC.
    assert_eq!(
        v.write_at(size - 1, &[1, 2], false).unwrap_err().kind(),
        ErrorKind::NoSpace
    );
    v.flush().unwrap();
    // A second opener is refused while this one holds the overlay.
    let e = Volume::open(&fx.manifest, &Shared::new(0), writable()).unwrap_err();
    assert!(e.to_string().contains("in use"), "{e}");
    drop(v);
    // Reopened: the writes are there.
    let v = Volume::open(&fx.manifest, &shared, writable()).unwrap();
    check(&v, &img);
    // Export with the overlay gives the same bytes.
    let out = fx.dir.join("with-overlay.img");
    v.export(&fs::File::create(&out).unwrap(), &|_| {}).unwrap();
    assert!(fs::read(&out).unwrap() == img);
    drop(v);
    // Another layout (more free space) is another volume: refused, both named.
    let text = fs::read_to_string(&fx.manifest)
        .unwrap()
        .replace("8MiB", "9MiB");
    fs::write(&fx.manifest, text).unwrap();
    let e = Volume::open(&fx.manifest, &shared, writable()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("belongs to volume") && msg.contains("overlay reset"),
        "{msg}"
    );
    // Discarding starts over from the base.
    let v = Volume::open(
        &fx.manifest,
        &shared,
        OpenOptions {
            overlay: true,
            discard_overlay: true,
        },
    )
    .unwrap();
    let mut head = vec![0u8; 100];
    v.read_at(0, &mut head).unwrap();
    assert_eq!(
        head,
        vec![0u8; 100],
        "the superblock's first bytes are zeros again"
    );
}

#[test]
fn read_only_volume_refuses_writes_and_fragments_open_once() {
    let fx = fixture();
    let second = fx.dir.join("second.toml");
    fs::write(
        &second,
        "name = \"u\"\nfragments = [\"b.frag\", \"a.frag\"]\ntrust = [\"lab.key.pub\"]\n",
    )
    .unwrap();
    let shared = Shared::new(1 << 20);
    let v = Volume::open(&fx.manifest, &shared, read_only()).unwrap();
    let u = Volume::open(&second, &shared, read_only()).unwrap();
    assert_eq!(shared.fragments.len(), 2, "each fragment file opened once");
    let e = u.write_at(0, &[1], false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert!(e.to_string().contains("read-only"));
    assert_eq!(u.trim(0, B, false).unwrap_err().kind(), ErrorKind::ReadOnly);
    u.flush().unwrap();
    // The same fragments with other free space: another image, same file bytes.
    assert_ne!(v.identity(), [0; 32]);
}

#!/usr/bin/env bash
# Regenerates the seed corpora of the fuzz targets (fuzz/corpus/<target>/,
# gitignored): a handful of small fragments built with the release `mosaic`
# binary from tiny generated trees (small files only, mixed sizes, hard
# links, a sparse file, an empty tree, one with --compress zstd). Every
# target gets every fragment; fragment_unsigned_parse also gets each
# fragment's bare metadata region (inputs starting with "MOSMETA\0").
#
#   scripts/fuzz-seeds.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

cargo build --release --quiet
mosaic="$root/target/release/mosaic"

work=$(mktemp -d /tmp/mosaic-fuzz-seeds.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
# Runs a command quietly; shows its output only when it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { printf '%s\n' "$out" >&2; echo "error: $* failed" >&2; exit 1; }
}
quiet "$mosaic" keygen -o key

# tiny: a few small files, a directory, a symlink (no data region).
mkdir -p tiny/d
printf 'hello\n' >tiny/a
printf 'x' >tiny/d/b
: >tiny/empty
ln -s a tiny/link

# mixed: small and large files, a hard link, a fifo, nested directories,
# an xattr when setfattr exists.
mkdir -p mixed/usr/bin mixed/etc/conf.d mixed/var/empty
printf 'root:x:0:0::/root:/bin/sh\n' >mixed/etc/passwd
seq 1 3000 >mixed/usr/bin/tool            # ~14 KB: data region, partial tail
head -c 8192 /dev/zero | tr '\0' 'z' >mixed/usr/bin/aligned
ln mixed/usr/bin/tool mixed/usr/bin/tool-link
printf 'k=v\n' >mixed/etc/conf.d/a.conf
cp mixed/etc/conf.d/a.conf mixed/etc/conf.d/b.conf   # deduplicated content
mkfifo mixed/var/fifo
ln -s ../usr/bin/tool mixed/etc/tool
chmod 4755 mixed/usr/bin/tool
if command -v setfattr >/dev/null 2>&1; then
  setfattr -n user.mosaic -v seed mixed/etc/passwd 2>/dev/null || true
fi

# sparse: a file with a hole in the middle (holes are not stored).
mkdir -p sparse
truncate -s 1M sparse/holes
printf 'middle' | dd of=sparse/holes bs=1 seek=500000 conv=notrunc status=none
seq 1 2000 >sparse/tail

# empty: just the root directory.
mkdir -p empty

quiet "$mosaic" fragment build tiny -o tiny.frag --key key
quiet "$mosaic" fragment build mixed -o mixed.frag --key key --name mixed --version 1.2
quiet "$mosaic" fragment build mixed -o mixed-zstd.frag --key key --compress zstd
quiet "$mosaic" fragment build mixed -o mixed-nosmall.frag --key key --small-threshold 0
quiet "$mosaic" fragment build sparse -o sparse-zstd.frag --key key --compress zstd:1
quiet "$mosaic" fragment build sparse -o sparse.frag --key key
quiet "$mosaic" fragment build empty -o empty.frag --key key

for t in fragment_open fragment_unsigned_parse fragment_resigned; do
  dir="$root/fuzz/corpus/$t"
  mkdir -p "$dir"
  cp ./*.frag "$dir/"
done

# Bare metadata regions: region table at 256, 96 bytes an entry, kind 3.
for f in ./*.frag; do
  off=0 len=0
  for i in $(seq 0 31); do
    e=$((256 + 96 * i))
    kind=$(od -An -tu1 -j "$e" -N1 "$f" | tr -d ' ')
    if [ "$kind" = 3 ]; then
      off=$(od -An -tu8 -j $((e + 8)) -N8 "$f" | tr -d ' ')
      len=$(od -An -tu8 -j $((e + 24)) -N8 "$f" | tr -d ' ')
      break
    fi
  done
  if [ "$len" -gt 0 ]; then
    tail -c +$((off + 1)) "$f" | head -c "$len" \
      >"$root/fuzz/corpus/fragment_unsigned_parse/meta-$(basename "$f" .frag)"
  fi
done

echo "seeds: $(ls ./*.frag | wc -l) fragments (and their metadata regions) into fuzz/corpus/{fragment_open,fragment_unsigned_parse,fragment_resigned}/"

# ext4_read: ext4 images. Volumes the generator makes (free = 0: ~4 MiB,
# mostly the journal's zeros) from the trees above, and small ones from
# mke2fs -d (1 KiB blocks, no journal) with and without metadata_csum.
ext4="$root/fuzz/corpus/ext4_read"
mkdir -p "$ext4"
for t in tiny mixed sparse; do
  printf 'name = "%s"\nfragments = ["%s.frag"]\ntrust = ["key.pub"]\n[filesystem]\nfree = 0\n' \
    "$t" "$t" >"$t.toml"
  quiet "$mosaic" volume export "$t.toml" -o "$ext4/volume-$t.img"
done
if command -v mke2fs >/dev/null 2>&1; then
  for f in "" "^metadata_csum,"; do
    img="$ext4/mke2fs-${f:+nocsum-}mixed.img"
    rm -f "$img"
    quiet mke2fs -q -F -t ext4 -b 1024 -N 64 -O "${f}^has_journal,^resize_inode" \
      -d mixed "$img" 384k
  done
fi
echo "seeds: $(ls "$ext4" | wc -l) ext4 images into fuzz/corpus/ext4_read/"

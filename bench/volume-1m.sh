#!/usr/bin/env bash
# The layout benchmark: 1,000,000 files composed from 4 fragments.
# Prints time and peak RSS of `mosaic volume check` and of building the
# block map (`volume export --json` reports the map time separately), the
# export throughput, and, on the same union tree, `mke2fs -t ext4 -d` and
# `mkfs.erofs` building an image.
#
#   bench/volume-1m.sh [FILES]        # default 1000000
#   KEEP=1 bench/volume-1m.sh         # keep the work directory
#
# The trees are generated (deterministic names and small contents spread
# over 1000 directories per fragment, a few larger files), under /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-1000000}
per=$((files / 4))

declare -A PKG=([mkfs.erofs]=erofs-utils [mke2fs]=e2fsprogs)
missing=()
for t in "${!PKG[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("${PKG[$t]}"); done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo build --release -q
bin=$PWD/target/release/mosaic
work=$(mktemp -d /tmp/mosaic-1m.XXXXXX)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
echo "work dir: $work"

echo "generating $files files in 4 trees..."
python3 - "$work" "$per" <<'PY'
import os, sys
work, per = sys.argv[1], int(sys.argv[2])
for f in range(4):
    root = os.path.join(work, "src", f"frag{f}")
    for d in range(1000):
        os.makedirs(os.path.join(root, f"f{f}", f"d{d:04}"), exist_ok=True)
    for i in range(per):
        p = os.path.join(root, f"f{f}", f"d{i % 1000:04}", f"file-{i:07}")
        with open(p, "w") as fh:
            fh.write(f"fragment {f} file {i}\n" * (1 + i % 7))
    big = os.path.join(root, f"f{f}", "big")
    with open(big, "wb") as fh:
        fh.write(os.urandom(8 << 20))
PY

"$bin" keygen -o "$work/k" >/dev/null 2>&1
for f in 0 1 2 3; do
  "$bin" fragment build "$work/src/frag$f" -o "$work/frag$f.frag" --key "$work/k" 2>/dev/null
done
cat >"$work/volume.toml" <<EOF
name = "bench"
fragments = ["frag0.frag", "frag1.frag", "frag2.frag", "frag3.frag"]
trust = ["k.pub"]
[filesystem]
free = "256MiB"
EOF

measure() { # label, command...: prints "label seconds rss_mib"
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/err"; exit 1; }
  read -r secs kb <"$work/time"
  printf '%-34s %8.2f s %8.0f MiB\n' "$label" "$secs" "$((kb / 1024))"
}

sync
echo
printf '%-34s %10s %12s\n' "step" "time" "peak RSS"
measure "mosaic volume check" "$bin" volume check "$work/volume.toml"
measure "mosaic volume export" "$bin" volume export "$work/volume.toml" -o "$work/mosaic.img" --json
map=$(python3 - "$work/out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("%.2f s map, %.0f MB/s export of %.0f MB (%d map extents)" % (d["map_seconds"], d["bytes"] / d["seconds"] / 1e6, d["bytes"] / 1e6, d["map_extents"]))
PY
)
echo "  -> $map"
e2fsck -fn "$work/mosaic.img" >"$work/fsck" 2>&1 && echo "  -> e2fsck -fn: clean" || { echo "  -> e2fsck -fn FAILED"; tail -5 "$work/fsck"; }

mkdir -p "$work/union"
for f in 0 1 2 3; do cp -al "$work/src/frag$f/." "$work/union/"; done
sync
size=$(du -sb --apparent-size "$work/union" | cut -f1)
measure "mke2fs -t ext4 -d (union tree)" mke2fs -q -F -t ext4 -N $((files + 100000)) -d "$work/union" "$work/mke2fs.img" "$(( files * 6 + (size / 1024) * 2 + 1000000 ))k"
measure "mkfs.erofs (union tree)" mkfs.erofs --quiet "$work/erofs.img" "$work/union"

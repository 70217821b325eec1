#!/usr/bin/env bash
# Build throughput of `mosaic fragment build` against mkfs.erofs and
# mksquashfs on one large real tree (default /usr/lib).
#
#   bench/fragment-build.sh [TREE]          # RUNS=2 by default; best run kept
#   RUNS=3 bench/fragment-build.sh /usr/share/doc
#   MOSAIC_BIN=/path/to/mosaic bench/fragment-build.sh   # skip cargo build
#   ONLY='mosaic|erofs' bench/fragment-build.sh          # tools whose name matches
#
# Compression levels: mosaic --compress zstd is level 3 (64 KiB chunks);
# mksquashfs -comp zstd defaults to level 15 (128 KiB blocks), so a level 3
# line is there too. mkfs.erofs here (1.5) has lz4 only: uncompressed.
#
# Fairness:
# - the page cache is warmed once (the tree is read through tar) and every
#   tool reads the same tree, warm;
# - `sync` runs before each run (nobody pays for earlier dirty pages), and
#   each run is timed twice: "wall" ends when the tool exits, "+sync" ends
#   after a `sync` that follows it. mosaic fsyncs its output before it
#   exits (durability), mkfs.erofs and mksquashfs do not, so "+sync" is the
#   like-for-like column;
# - each tool runs RUNS times; the table shows the best (smallest) of each
#   time column (peak RSS: the largest seen);
# - input = bytes of regular files, each inode once (hard links share).
# Images go to a temporary directory under /tmp, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=${1:-/usr/lib}
runs=${RUNS:-2}
[ -d "$tree" ] || { echo "error: $tree is not a directory" >&2; exit 2; }

# tool -> Debian package
declare -A PKG=([mkfs.erofs]=erofs-utils [mksquashfs]=squashfs-tools)
missing=()
for t in "${!PKG[@]}"; do
  command -v "$t" >/dev/null 2>&1 || missing+=("${PKG[$t]}")
done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -n "${MOSAIC_BIN:-}" ]; then
  mosaic=$MOSAIC_BIN            # a binary built elsewhere
else
  cargo build --release --quiet
  mosaic="$(pwd)/target/release/mosaic"
fi

work=$(mktemp -d /tmp/mosaic-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$mosaic" keygen -o "$work/key" >/dev/null 2>&1

files=$(find "$tree" -type f | wc -l)
input=$(find "$tree" -type f -printf '%D:%i %s\n' | sort -u | awk '{s += $2} END {printf "%.0f", s}')
echo "tree: $tree, $files regular files, $input bytes of content ($(( input / 1000000 )) MB)"
echo "warming the page cache..."
tar cf - "$tree" 2>/dev/null | cat >/dev/null

# name | output file | command (the output path is $out)
tools=(
  "mosaic fragment build|m.frag|$mosaic fragment build $tree -o \$out --key $work/key"
  "mosaic --compress zstd|mz.frag|$mosaic fragment build $tree -o \$out --key $work/key --compress zstd"
  "mkfs.erofs (uncompressed)|e.img|mkfs.erofs --quiet \$out $tree"
  "mksquashfs -comp zstd|s.img|mksquashfs $tree \$out -comp zstd -noappend -no-progress -quiet"
  "mksquashfs zstd level 3|s3.img|mksquashfs $tree \$out -comp zstd -Xcompression-level 3 -noappend -no-progress -quiet"
)

now() { date +%s.%N; }
min() { awk -v a="$1" -v b="$2" 'BEGIN {print (a == "" || b < a) ? b : a}'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN {print (a == "" || b > a) ? b : a}'; }

rows=()
for spec in "${tools[@]}"; do
  IFS='|' read -r name file cmd <<<"$spec"
  [[ $name =~ ${ONLY:-.} ]] || continue
  out="$work/$file"
  best_wall="" best_sync="" best_rss=""
  for r in $(seq 1 "$runs"); do
    rm -f "$out"
    sync
    t0=$(now)
    if ! /usr/bin/time -f '%M' -o "$work/rss" bash -c "out=$out; $cmd" >"$work/log" 2>&1; then
      cat "$work/log" >&2
      echo "error: $name failed" >&2
      exit 1
    fi
    t1=$(now)
    sync
    t2=$(now)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    wsync=$(awk -v a="$t0" -v b="$t2" 'BEGIN {printf "%.2f", b - a}')
    rss=$(tail -n 1 "$work/rss")
    echo "  $name run $r: ${wall} s, ${wsync} s with sync, peak RSS $(( rss / 1024 )) MB"
    best_wall=$(min "$best_wall" "$wall")
    best_sync=$(min "$best_sync" "$wsync")
    best_rss=$(max "$best_rss" "$rss")
  done
  size=$(stat -c %s "$out")
  rows+=("$name|$best_wall|$best_sync|$size|$best_rss")
  rm -f "$out"
done

echo
echo "input: $tree, $files files, $(awk -v b="$input" 'BEGIN {printf "%.1f", b / 1e6}') MB; best of $runs runs; $(nproc) CPUs"
printf '%-26s %8s %8s %9s %8s %11s %8s %9s\n' tool "wall s" "MB/s" "+sync s" "MB/s" "output MB" "ratio" "peak RSS"
for row in "${rows[@]}"; do
  IFS='|' read -r name wall wsync size rss <<<"$row"
  awk -v n="$name" -v w="$wall" -v s="$wsync" -v z="$size" -v r="$rss" -v in_="$input" 'BEGIN {
    printf "%-26s %8.2f %8.0f %9.2f %8.0f %11.1f %8.3f %6d MB\n",
      n, w, in_ / w / 1e6, s, in_ / s / 1e6, z / 1e6, z / in_, r / 1024 }'
done

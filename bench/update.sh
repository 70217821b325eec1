#!/usr/bin/env bash
# Fragment updates on real releases: numpy 1.26.0 (B), 1.26.3 (N), 1.26.4 (R),
# manylinux x86_64 wheels for CPython 3.11 from PyPI, unpacked.
#
#   bench/update.sh                      # RUNS=3 by default; best run kept
#   RUNS=5 bench/update.sh
#   MOSAIC_BIN=/path/to/mosaic bench/update.sh   # skip cargo build
#
# Package size: `mosaic update diff --base B --target R` (level 19) against
# the full R fragment, `zstd -19 --long=31 --patch-from=tar(B) tar(R)` and
# `xdelta3 -9 -e -s tar(B) tar(R)` (tars made with GNU tar from the same
# trees; the mosaic package also carries R's metadata: modes, times, xattrs).
#
# Apply: a device on B hydrates N (writing N.frag.rev), then R from N and
# N.frag.rev (the case the model is for), and R from B directly. Each apply
# is the whole command: package checks, reverse differentials computed and
# written, regions, hash region, signature check, fsync of both files and of
# the directory. Throughput = bytes of the hydrated fragment / wall time.
# CPU = user + system time (the least of the runs): on a shared machine
# the wall time also measures the neighbours. Peak RSS from /usr/bin/time -v. The hydrated fragments are compared with
# the lab's byte for byte (cmp) and the script fails if they differ.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
versions=(1.26.0 1.26.3 1.26.4)

missing=()
command -v xdelta3 >/dev/null 2>&1 || missing+=(xdelta3)
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v unzip >/dev/null 2>&1 || missing+=(unzip)
command -v bc >/dev/null 2>&1 || missing+=(bc)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -n "${MOSAIC_BIN:-}" ]; then
  mosaic=$MOSAIC_BIN
else
  cargo build --release --quiet
  mosaic="$(pwd)/target/release/mosaic"
fi

cache=${CACHE:-/tmp/mosaic-bench-wheels}
mkdir -p "$cache"
for v in "${versions[@]}"; do
  if ! ls "$cache"/numpy-"$v"-*.whl >/dev/null 2>&1; then
    echo "downloading numpy $v..."
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform manylinux_2_17_x86_64 "numpy==$v" -d "$cache"
  fi
done

work=$(mktemp -d /tmp/mosaic-bench-update.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$mosaic" keygen -o "$work/key" >/dev/null 2>&1
names=(B N R)
for i in 0 1 2; do
  v=${versions[$i]} n=${names[$i]}
  mkdir -p "$work/tree-$n"
  unzip -q "$cache"/numpy-"$v"-*.whl -d "$work/tree-$n"
  "$mosaic" fragment build "$work/tree-$n" -o "$work/$n.frag" --key "$work/key" \
    --name numpy --version "$v" >/dev/null
  "$mosaic" fragment build "$work/tree-$n" -o "$work/$n.z.frag" --key "$work/key" \
    --name numpy --version "$v" --compress zstd >/dev/null
  tar -C "$work/tree-$n" --sort=name -cf "$work/$n.tar" .
done
size() { stat -c %s "$1"; }
files=$(find "$work/tree-R" -type f | wc -l)
content=$(find "$work/tree-R" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f", s}')
echo "R: numpy ${versions[2]}, $files files, $content bytes of content; fragment $(size "$work/R.frag") bytes"

# --- package size ---
t0=$(date +%s.%N)
"$mosaic" update diff --base "$work/B.frag" --target "$work/R.frag" --key "$work/key" -o "$work/R.mupd" >/dev/null
t1=$(date +%s.%N)
diff_s=$(echo "$t1 - $t0" | bc)
"$mosaic" update diff --base "$work/B.frag" --target "$work/N.frag" --key "$work/key" -o "$work/N.mupd" >/dev/null
"$mosaic" update diff --base "$work/B.z.frag" --target "$work/R.z.frag" --key "$work/key" -o "$work/R.z.mupd" >/dev/null
"$mosaic" update diff --base "$work/B.z.frag" --target "$work/N.z.frag" --key "$work/key" -o "$work/N.z.mupd" >/dev/null
t0=$(date +%s.%N)
zstd -q -19 --long=31 --patch-from="$work/B.tar" "$work/R.tar" -o "$work/R.tar.zst" 2>/dev/null
t1=$(date +%s.%N)
zstd_s=$(echo "$t1 - $t0" | bc)
t0=$(date +%s.%N)
xdelta3 -9 -e -f -s "$work/B.tar" "$work/R.tar" "$work/R.tar.xd3"
t1=$(date +%s.%N)
xd_s=$(echo "$t1 - $t0" | bc)
zstd -q -19 --long=31 "$work/R.tar" -o "$work/R.tar.full.zst"
pkg=$(size "$work/R.mupd")
echo
echo "| B -> R (numpy ${versions[0]} -> ${versions[2]}) | bytes | vs mosaic package | time s |"
echo "| --- | ---: | ---: | ---: |"
printf "| **mosaic update diff** (package) | **%s** | 1.00 | %.1f |\n" "$pkg" "$diff_s"
printf "| zstd -19 --long=31 --patch-from tar(B) tar(R) | %s | %.2f | %.1f |\n" "$(size "$work/R.tar.zst")" "$(echo "$(size "$work/R.tar.zst") / $pkg" | bc -l)" "$zstd_s"
printf "| xdelta3 -9 tar(B) tar(R) | %s | %.2f | %.1f |\n" "$(size "$work/R.tar.xd3")" "$(echo "$(size "$work/R.tar.xd3") / $pkg" | bc -l)" "$xd_s"
printf "| zstd -19 --long=31 tar(R), no base | %s | %.2f | |\n" "$(size "$work/R.tar.full.zst")" "$(echo "$(size "$work/R.tar.full.zst") / $pkg" | bc -l)"
printf "| full R fragment (raw) | %s | %.2f | |\n" "$(size "$work/R.frag")" "$(echo "$(size "$work/R.frag") / $pkg" | bc -l)"
printf "| mosaic package, zstd fragments | %s | %.2f | |\n" "$(size "$work/R.z.mupd")" "$(echo "$(size "$work/R.z.mupd") / $pkg" | bc -l)"
printf "| full R fragment (--compress zstd) | %s | %.2f | |\n" "$(size "$work/R.z.frag")" "$(echo "$(size "$work/R.z.frag") / $pkg" | bc -l)"

# --- apply ---
# best wall time of RUNS runs of: $1 label, $2 from, $3 package, $4 out, $5 lab copy
apply_row() {
  local label=$1 from=$2 pkg=$3 out=$4 lab=$5 best="" cpu="" rss=0 tmp="$work/time.txt"
  for _ in $(seq "$runs"); do
    rm -f "$out" "$out.rev"
    sync
    /usr/bin/time -v -o "$tmp" "$mosaic" update apply --fragment "$from" --package "$pkg" \
      --trust "$work/key.pub" -o "$out" >/dev/null
    cmp "$out" "$lab" || { echo "error: $out differs from the lab's $lab" >&2; exit 1; }
    local w r
    w=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$tmp")
    r=$(awk -F': ' '/Maximum resident/ {print $2}' "$tmp")
    c=$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$tmp")
    if [ -z "$best" ] || [ "$(echo "$w < $best" | bc)" = 1 ]; then best=$w; fi
    if [ -z "$cpu" ] || [ "$(echo "$c < $cpu" | bc)" = 1 ]; then cpu=$c; fi
    [ "$r" -gt "$rss" ] && rss=$r
  done
  local bytes mbps
  bytes=$(size "$out")
  mbps=$(echo "$bytes / $best / 1000000" | bc -l)
  printf "| %s | %s | %.2f | **%.0f** | %.2f | %.0f | %s | %.0f MiB |\n" "$label" "$bytes" "$best" "$mbps" \
    "$cpu" "$(echo "$bytes / $cpu / 1000000" | bc -l)" \
    "$(size "$out.rev" 2>/dev/null || echo -)" "$(echo "$rss / 1024" | bc -l)"
}
dev="$work/device"
mkdir -p "$dev"
cp "$work/B.frag" "$dev/B.frag"
cp "$work/B.z.frag" "$dev/B.z.frag"
echo
echo "load average before the applies: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
echo
echo "| apply (best of $runs, fsync included) | output bytes | wall s | MB/s | CPU s | MB per CPU s | .rev bytes | peak RSS |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
apply_row "B -> N (device on the base)" "$dev/B.frag" "$work/N.mupd" "$dev/N.frag" "$work/N.frag"
apply_row "**N + N.frag.rev -> R**" "$dev/N.frag" "$work/R.mupd" "$dev/R.frag" "$work/R.frag"
apply_row "B -> R" "$dev/B.frag" "$work/R.mupd" "$dev/R2.frag" "$work/R.frag"
apply_row "zstd fragments: B -> N" "$dev/B.z.frag" "$work/N.z.mupd" "$dev/N.z.frag" "$work/N.z.frag"
apply_row "zstd fragments: N -> R" "$dev/N.z.frag" "$work/R.z.mupd" "$dev/R.z.frag" "$work/R.z.frag"
echo
echo "phases of one N -> R apply (RUST_LOG=info):"
RUST_LOG=info "$mosaic" update apply --fragment "$dev/N.frag" --package "$work/R.mupd" \
  --trust "$work/key.pub" -o "$dev/R3.frag" 2>&1 >/dev/null | sed -n 's/.*update::apply: //p'

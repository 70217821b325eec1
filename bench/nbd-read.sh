#!/usr/bin/env bash
# Serving benchmark: `mosaic serve` (every fragment block blake3-verified
# when read, bounded cache of verified blocks) against `nbdkit file` serving
# the same bytes (`mosaic volume export`, a plain raw file in the page cache).
#
#   bench/nbd-read.sh [DIR]        # default: a copy of /usr/lib without
#                                  # google-cloud-sdk and jvm (1.4-1.7 GB here)
#   RUNTIME=10 ROUNDS=3 bench/nbd-read.sh   # seconds per fio run (default 5),
#                                  # rounds per job (default 2; best round kept)
#   CACHE=1GiB bench/nbd-read.sh   # mosaic --cache-size (default: its own, 256MiB)
#   MOSAIC_BIN=/path/to/mosaic bench/nbd-read.sh   # skip cargo build
#   KEEP=1 bench/nbd-read.sh       # keep the work directory
#
# One run, both servers side by side, one after the other per job (never at
# the same time), so ratios compare like with like:
# - after one untimed nbdcopy through each server (warm-up: mosaic's
#   cache arena grows to its bound, which costs page clearing and faults),
#   fio, ioengine=nbd over a Unix socket, one job, time-based, ROUNDS
#   rounds alternating which server goes first, the best round of each
#   server kept (other work on a 2-core machine only slows runs down):
#   1 MiB sequential read QD8 (MB/s), 4 KiB random read QD1 (mean
#   latency), 4 KiB random read QD32 (IOPS), 4 KiB random write QD32 (IOPS;
#   mosaic writes into its overlay, nbdkit into a copy of the raw image;
#   no flushes);
# - nbdcopy of the whole export to null: (its defaults: 4 connections,
#   extents on, so both skip the image's holes);
# - for every run, the server's CPU time (/proc/PID/stat) per I/O or per
#   GB: client and server share the 2 cores, so throughput is mostly a
#   CPU budget, and CPU per unit of work is the figure that other load on
#   the machine disturbs least;
# - a cold first read: mosaic restarted (empty verified-block cache, the
#   fragment file in the page cache) and one nbdcopy, beside blake3's own
#   speed on this machine (b3sum, `cargo install b3sum`, with 1 thread and
#   all threads: the same large-input SIMD path mosaic uses for aligned
#   runs of blocks) and `mosaic fragment verify` (every block, one core).
# The data read back through mosaic is compared with the exported image once.
# The volume has 64 MiB of free space so random reads land on file data.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime=${RUNTIME:-5}
rounds=${ROUNDS:-2}

declare -A PKG=([nbdkit]=nbdkit [nbdcopy]=libnbd-bin [fio]=fio [jq]=jq)
missing=()
for t in "${!PKG[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("${PKG[$t]}"); done
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

work=$(mktemp -d /tmp/mosaic-nbd.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
echo "work dir: $work"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
start=$(now)
step() { echo "[$(since "$start") s] $*"; }

# ---------------------------------------------------------------- the volume
if [ $# -ge 1 ]; then
  tree=$1
  [ -d "$tree" ] || { echo "error: $tree is not a directory" >&2; exit 2; }
else
  tree=$work/tree
  mkdir "$tree"
  step "copying /usr/lib (without google-cloud-sdk, jvm) to $tree..."
  tar -C /usr/lib --exclude=./google-cloud-sdk --exclude=./jvm -cf - . | tar -C "$tree" -xf -
fi
"$mosaic" keygen -o "$work/key" >/dev/null 2>&1
t0=$(now)
"$mosaic" fragment build "$tree" -o "$work/lib.frag" --key "$work/key" --name lib >/dev/null 2>&1
step "fragment built in $(since "$t0") s: $(( $(stat -c %s "$work/lib.frag") / 1000000 )) MB"
[ $# -ge 1 ] || rm -rf "$tree"
for m in ro rw; do
  cat >"$work/$m.toml" <<EOF
name = "bench-$m"
fragments = ["lib.frag"]
trust = ["key.pub"]
[filesystem]
free = "64MiB"
EOF
done
printf '[overlay]\npath = "rw.overlay"\n' >>"$work/rw.toml"
"$mosaic" volume export "$work/ro.toml" -o "$work/vol.raw" >/dev/null 2>&1
cp --sparse=always "$work/vol.raw" "$work/vol-rw.raw"
size=$(stat -c %s "$work/vol.raw")
data=$(( $(stat -c %b "$work/vol.raw") * $(stat -c %B "$work/vol.raw") ))
step "volume: $size bytes ($(( size >> 20 )) MiB), $(( data >> 20 )) MiB allocated in the raw image"
# Everything both servers read is in the page cache.
cat "$work/lib.frag" "$work/vol.raw" "$work/vol-rw.raw" >/dev/null

# ---------------------------------------------------------------- servers
cache_args=()
[ -z "${CACHE:-}" ] || cache_args=(--cache-size "$CACHE")
mosaic_pid=""
start_mosaic() { # log file
  rm -f "$work/m.sock"
  : >"$1"
  RUST_LOG=${RUST_LOG:-info} "$mosaic" serve "$work/ro.toml" "$work/rw.toml" --socket "$work/m.sock" \
    "${cache_args[@]}" 2>"$1" &
  mosaic_pid=$!
  pids+=("$mosaic_pid")
  for _ in $(seq 300); do
    grep -q 'listening on' "$1" && return 0
    kill -0 "$mosaic_pid" 2>/dev/null || break
    sleep 0.05
  done
  cat "$1" >&2
  echo "error: mosaic serve did not start" >&2
  exit 1
}
stop_mosaic() { # prints the cache counters of its log
  kill -TERM "$mosaic_pid"
  local rc=0
  wait "$mosaic_pid" || rc=$?
  local keep=()
  for p in "${pids[@]}"; do [ "$p" = "$mosaic_pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  [ "$rc" = 0 ] || { echo "warning: mosaic serve exited with $rc" >&2; tail -5 "$1" >&2; }
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E 'stopped' | grep -oE 'cache_hits=[0-9]+ cache_misses=[0-9]+' | head -1 | sed 's/^/  mosaic /' || true
}
start_nbdkit() { # socket, nbdkit args...
  local sock=$1; shift
  nbdkit -f --exit-with-parent -U "$sock" "$@" &
  last_pid=$!
  pids+=("$last_pid")
  for _ in $(seq 200); do [ -S "$sock" ] && return 0; sleep 0.05; done
  echo "error: nbdkit did not create $sock" >&2
  exit 1
}
step "starting the servers (load average now: $(cut -d' ' -f1-3 /proc/loadavg))..."
if awk -v l="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {exit !(l > 1)}'; then
  echo "  warning: other work is running (load average above 1 on $(nproc) CPUs): expect noisy figures;" \
    "the CPU-per-work table below is the steadier one"
fi
start_mosaic "$work/mosaic.log"
start_nbdkit "$work/k.sock" -r file "$work/vol.raw"
k_pid=$last_pid
start_nbdkit "$work/kw.sock" file "$work/vol-rw.raw"
kw_pid=$last_pid
M_RO="nbd+unix:///bench-ro?socket=$work/m.sock"
M_RW="nbd+unix:///bench-rw?socket=$work/m.sock"
K_RO="nbd+unix:///?socket=$work/k.sock"
K_RW="nbd+unix:///?socket=$work/kw.sock"

# ---------------------------------------------------------------- jobs
# CPU time (user + system) of a process, in clock ticks.
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# fio_job tag uri rw bs depth server_pid
#   -> "mbps iops lat_us p99_us server_cpu_us_per_io server_cpu_s_per_GB"
fio_job() {
  local tag=$1 uri=$2 rw=$3 bs=$4 qd=$5 pid=$6 dir=read t0 t1
  [[ $rw == *write ]] && dir=write
  t0=$(ticks "$pid")
  fio --name="$tag" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$qd" \
    --time_based --runtime="$runtime" --norandommap --randrepeat=0 \
    --output-format=json --output="$work/$tag.json" >/dev/null 2>"$work/$tag.err" || {
      cat "$work/$tag.err" >&2; echo "error: fio $tag failed" >&2; exit 1; }
  t1=$(ticks "$pid")
  jq -r --arg d "$dir" --argjson cpu "$(awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN {print (b - a) / hz}')" \
    '.jobs[0] | (.error|tostring) + " " + (.[$d] |
    "\(.bw_bytes / 1e6) \(.iops) \(.lat_ns.mean / 1e3) \(.clat_ns.percentile["99.000000"] / 1e3) \($cpu * 1e6 / .total_ios) \($cpu * 1e9 / .io_bytes)")' \
    "$work/$tag.json" >"$work/$tag.out"
  local err; read -r err _ <"$work/$tag.out"
  [ "$err" = 0 ] || { echo "error: fio $tag reported error $err" >&2; cat "$work/$tag.err" >&2; exit 1; }
  cut -d' ' -f2- "$work/$tag.out"
}

declare -A R
better() { # field max|min old new -> the better line (old may be empty)
  awk -v f="$1" -v how="$2" -v a="$3" -v b="$4" 'BEGIN {
    if (a == "") { print b; exit }
    split(a, x, " "); split(b, y, " ")
    print ((how == "max" && y[f] > x[f]) || (how == "min" && y[f] < x[f])) ? b : a }'
}
job() { # key rw bs depth uri_mosaic uri_nbdkit field max|min nbdkit_pid (the field ranks rounds)
  local key=$1 rw=$2 bs=$3 qd=$4 f=$7 how=$8 r m k
  R[m_$key]="" R[k_$key]=""
  for r in $(seq 1 "$rounds"); do
    step "fio $key ($rw bs=$bs iodepth=$qd, ${runtime}s) round $r"
    # Alternate who goes first, so a drift in the machine's load hits both.
    if [ $((r % 2)) = 1 ]; then
      m=$(fio_job "m_$key$r" "$5" "$rw" "$bs" "$qd" "$mosaic_pid"); k=$(fio_job "k_$key$r" "$6" "$rw" "$bs" "$qd" "$9")
    else
      k=$(fio_job "k_$key$r" "$6" "$rw" "$bs" "$qd" "$9"); m=$(fio_job "m_$key$r" "$5" "$rw" "$bs" "$qd" "$mosaic_pid")
    fi
    echo "    mosaic $(echo "$m" | cut -d' ' -f"$f"), nbdkit $(echo "$k" | cut -d' ' -f"$f")"
    R[m_$key]=$(better "$f" "$how" "${R[m_$key]}" "$m")
    R[k_$key]=$(better "$f" "$how" "${R[k_$key]}" "$k")
  done
}
# Steady state: the cold case is measured on its own below.
step "warm-up: one untimed nbdcopy of each read export (mosaic's cache arena reaches its bound)"
nbdcopy "$M_RO" null:
nbdcopy "$K_RO" null:
# fields: 1 MB/s, 2 IOPS, 3 mean latency us, 4 p99 latency us
job seq read 1M 8 "$M_RO" "$K_RO" 1 max "$k_pid"
job qd1 randread 4k 1 "$M_RO" "$K_RO" 3 min "$k_pid"
job qd32 randread 4k 32 "$M_RO" "$K_RO" 2 max "$k_pid"
job wr32 randwrite 4k 32 "$M_RW" "$K_RW" 2 max "$kw_pid"

copy() { # uri server_pid -> "seconds server_cpu_seconds"
  local t0 c0 c1; t0=$(now); c0=$(ticks "$2")
  nbdcopy "$1" null: || { echo "error: nbdcopy $1 failed" >&2; exit 1; }
  c1=$(ticks "$2")
  echo "$(since "$t0") $(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN {print (b - a) / hz}')"
}
R[m_copy]="" R[k_copy]=""
for r in $(seq 1 "$rounds"); do
  step "nbdcopy whole export to null: round $r"
  if [ $((r % 2)) = 1 ]; then m=$(copy "$M_RO" "$mosaic_pid"); k=$(copy "$K_RO" "$k_pid")
  else k=$(copy "$K_RO" "$k_pid"); m=$(copy "$M_RO" "$mosaic_pid"); fi
  echo "    mosaic ${m%% *} s, nbdkit ${k%% *} s"
  R[m_copy]=$(better 1 min "${R[m_copy]}" "$m")
  R[k_copy]=$(better 1 min "${R[k_copy]}" "$k")
done

step "checking the bytes mosaic serves against the exported image..."
if nbdcopy "$M_RO" - | cmp -s - "$work/vol.raw"; then check=identical; else check="DIFFERENT (server bug)"; fi
echo "  $check"
step "mosaic cache counters of the run (one cache shared by both exports):"
stop_mosaic "$work/mosaic.log"

# ---------------------------------------------------------------- cold read
step "cold first read: restarting mosaic (fragment file in the page cache)..."
cat "$work/lib.frag" >/dev/null
start_mosaic "$work/mosaic-cold.log"
R[m_cold]=$(copy "$M_RO" "$mosaic_pid")
stop_mosaic "$work/mosaic-cold.log"

fsize=$(stat -c %s "$work/lib.frag")
b3() { # threads -> seconds to hash the fragment file (warm)
  local t0; t0=$(now)
  b3sum --num-threads "$1" "$work/lib.frag" >/dev/null
  since "$t0"
}
if command -v b3sum >/dev/null 2>&1; then
  b3_1=$(b3 1); b3_all=$(b3 "$(nproc)")
else
  b3_1=""; b3_all=""
  echo "(b3sum not found: \`cargo install b3sum\` adds blake3's raw speed to the table)"
fi
t0=$(now)
"$mosaic" fragment verify "$work/lib.frag" --trust "$work/key.pub" >/dev/null 2>&1
verify_s=$(since "$t0")

# ---------------------------------------------------------------- report
mb() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.0f", b / s / 1e6}'; }
field() { echo "${R[$1]}" | cut -d' ' -f"$2"; }
echo
echo "volume $(( size >> 20 )) MiB ($(( data >> 20 )) MiB of data), fragment $(( fsize >> 20 )) MiB;" \
  "$(nproc) CPUs (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)); fio best of $rounds x ${runtime}s; mosaic --cache-size ${CACHE:-256MiB (default)}"
printf '%-40s %12s %12s %7s  %s\n' job mosaic nbdkit ratio target
row() { # label mosaic nbdkit higher_is_better target_text target_ratio
  awk -v l="$1" -v m="$2" -v k="$3" -v hi="$4" -v t="$5" -v tr="$6" 'BEGIN {
    r = m / k
    verdict = ""
    if (tr != "") verdict = ((hi && r >= tr) || (!hi && r <= tr)) ? "  met" : "  NOT met"
    printf "%-40s %12s %12s %6.2fx  %s%s\n", l, fmt(m), fmt(k), r, t, verdict }
  function fmt(x) { return sprintf(x < 10 ? "%.2f" : "%.1f", x) }'
}
kilo() { awk -v x="$1" 'BEGIN {print x / 1000}'; }
per_gb() { awk -v c="$1" -v b="$2" 'BEGIN {print c * 1e9 / b}'; }
row "1 MiB seq read QD8 (MB/s)" "$(field m_seq 1)" "$(field k_seq 1)" 1 ">= 1.3x" 1.3
row "4 KiB rand read QD1 (mean us)" "$(field m_qd1 3)" "$(field k_qd1 3)" 0 "<= 0.8x" 0.8
row "4 KiB rand read QD1 (p99 us)" "$(field m_qd1 4)" "$(field k_qd1 4)" 0 "-" ""
row "4 KiB rand read QD32 (kIOPS)" "$(kilo "$(field m_qd32 2)")" "$(kilo "$(field k_qd32 2)")" 1 ">= 1.2x" 1.2
row "4 KiB rand write QD32 (kIOPS)" "$(kilo "$(field m_wr32 2)")" "$(kilo "$(field k_wr32 2)")" 1 "-" ""
row "nbdcopy whole export (MB/s)" "$(mb "$size" "$(field m_copy 1)")" "$(mb "$size" "$(field k_copy 1)")" 1 "-" ""
echo
echo "server CPU time (user + system) per unit of work, same runs (insensitive to other load):"
row "1 MiB seq read QD8 (CPU s per GB)" "$(field m_seq 6)" "$(field k_seq 6)" 0 "-" ""
row "4 KiB rand read QD1 (CPU us per I/O)" "$(field m_qd1 5)" "$(field k_qd1 5)" 0 "-" ""
row "4 KiB rand read QD32 (CPU us per I/O)" "$(field m_qd32 5)" "$(field k_qd32 5)" 0 "-" ""
row "4 KiB rand write QD32 (CPU us per I/O)" "$(field m_wr32 5)" "$(field k_wr32 5)" 0 "-" ""
row "nbdcopy whole export (CPU s per GB)" "$(per_gb "$(field m_copy 2)" "$size")" "$(per_gb "$(field k_copy 2)" "$size")" 0 "-" ""
echo
echo "cold first read (mosaic restarted, empty cache): nbdcopy $(field m_cold 1) s," \
  "$(mb "$size" "$(field m_cold 1)") MB/s of volume, $(mb "$data" "$(field m_cold 1)") MB/s of data," \
  "server CPU $(field m_cold 2) s ($(per_gb "$(field m_cold 2)" "$data") s per GB of data)"
if [ -n "$b3_1" ]; then
  echo "blake3 (b3sum of the ${fsize}-byte fragment, warm): 1 thread $(mb "$fsize" "$b3_1") MB/s," \
    "$(nproc) threads $(mb "$fsize" "$b3_all") MB/s"
fi
echo "mosaic fragment verify (every block, one core): ${verify_s} s, $(mb "$fsize" "$verify_s") MB/s"
echo "data served by mosaic vs the exported image: $check"
[ "$check" = identical ]

#!/usr/bin/env bash
# VM boot benchmark: time from qemu's start to the guest's
# "mosaic-vm: booted" console line, booting the vm-images/ VM
#   - from mosaic: `mosaic serve` of the three fragments, qemu's NBD client
#     (nbd+unix), a fresh overlay each run (the server is restarted, so its
#     verified-block cache starts empty every run);
#   - from a file: the raw image `mosaic volume export` writes of the same
#     volume (same bytes), a fresh copy each run, qemu's file driver.
# Same kernel, initramfs, command line and qemu options (TCG by default).
# The runs alternate between the two; a first run of each is a warm-up and
# is not counted (page cache). Prints every run, then medians and the ratio.
#
#   bench/vm-boot.sh [RUNS]           # default 7 counted runs of each
#   bench/vm-boot.sh 7 --kvm          # extra arguments go to vm-images/qemu.sh
#   KEEP=1 bench/vm-boot.sh           # keep the work directory
#   MOSAIC=path/to/mosaic bench/vm-boot.sh   # that binary (default: cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
shift || true
qemu_extra=("$@")

command -v qemu-system-x86_64 >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 >/dev/null
}
if [ -n "${MOSAIC:-}" ]; then
    bin=$(realpath "$MOSAIC")
else
    cargo build --release -q
    bin=$PWD/target/release/mosaic
fi
work=$(mktemp -d /tmp/mosaic-vm-boot.XXXXXX)
server=
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server"
        wait "$server" || true
    fi
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
echo "work dir: $work"

MOSAIC=$bin vm-images/build.sh "$work/out" 2>"$work/build.log" || { cat "$work/build.log"; exit 1; }
out=$work/out
"$bin" volume export "$out/volume.toml" -o "$work/base.raw" 2>/dev/null
echo "image: $(stat -c %s "$work/base.raw") bytes; kernel $(tail -n 1 "$work/build.log" | sed 's/.*(kernel \(.*\))/\1/')"

start_server() {
    "$bin" overlay reset "$out/volume.toml" >/dev/null 2>&1
    rm -f "$work/nbd.sock"
    "$bin" serve "$out/volume.toml" --socket "$work/nbd.sock" 2>"$work/serve.log" &
    server=$!
    for _ in $(seq 600); do
        grep -q '^listening on' "$work/serve.log" && return 0
        kill -0 "$server" 2>/dev/null || break
        sleep 0.05
    done
    echo "mosaic serve did not start:" >&2
    cat "$work/serve.log" >&2
    exit 1
}
stop_server() {
    # CPU time the server used for the boot (user + system clock ticks).
    local stat
    stat=$(cat "/proc/$server/stat")
    stat=${stat##*) }
    echo "$stat" | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($12 + $13) / hz }' >"$work/server-cpu"
    kill -TERM "$server"
    wait "$server"
    server=
}

# boot DRIVE-ARGS...: prints "SECONDS_TO_BOOTED GUEST_UPTIME SECONDS_TO_EXIT".
boot() {
    local t0 line booted='' uptime=''
    t0=$(date +%s%N)
    while IFS= read -r line; do
        case "$line" in
        *"mosaic-vm: booted"*)
            booted=$(date +%s%N)
            uptime=$(echo "$line" | sed -n 's/.*uptime \([0-9.]*\) s.*/\1/p')
            ;;
        *FAILED* | *"read failed"*) echo "guest: $line" >&2 ;;
        esac
    done < <(vm-images/qemu.sh --out "$out" --batch --steps none "$@" "${qemu_extra[@]}" </dev/null 2>&1)
    local t1
    t1=$(date +%s%N)
    [ -n "$booted" ] || { echo "the guest never printed 'mosaic-vm: booted'" >&2; exit 1; }
    awk -v a="$t0" -v b="$booted" -v c="$t1" -v u="$uptime" \
        'BEGIN { printf "%.3f %s %.3f\n", (b - a) / 1e9, u, (c - a) / 1e9 }'
}

run_mosaic() {
    local r
    start_server
    r=$(boot --nbd "$work/nbd.sock" --export root)
    stop_server
    echo "$r $(cat "$work/server-cpu")"
}
run_file() {
    cp --sparse=always "$work/base.raw" "$work/run.raw"
    echo "$(boot --image "$work/run.raw") -"
}

echo "warm-up: mosaic $(run_mosaic | cut -d' ' -f1) s, file $(run_file | cut -d' ' -f1) s"
printf '%-4s %-7s %10s %12s %10s %12s\n' run source booted_s guest_uptime exit_s server_cpu_s
: >"$work/results"
for i in $(seq "$runs"); do
    if [ $((i % 2)) = 1 ]; then order="mosaic file"; else order="file mosaic"; fi
    for src in $order; do
        r=$(run_"$src")
        echo "$src $r $i" >>"$work/results"
        # shellcheck disable=SC2086 # $r is four columns
        printf '%-4s %-7s %10s %12s %10s %12s\n' "$i" "$src" $r
    done
done
median() { # SOURCE COLUMN
    awk -v s="$1" -v c="$2" '$1 == s { print $c }' "$work/results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
m_boot=$(median mosaic 2) f_boot=$(median file 2)
m_up=$(median mosaic 3) f_up=$(median file 3)
echo
echo "median time to 'booted': mosaic (NBD) ${m_boot} s, file ${f_boot} s;" \
    "ratio $(awk -v a="$m_boot" -v b="$f_boot" 'BEGIN { printf "%.3f", a / b }')"
echo "median guest uptime at 'booted': mosaic ${m_up} s, file ${f_up} s"
# Each run's pair (the two boots run back to back) as a ratio: less exposed
# to load that changes over minutes.
pairs=$(awk '$1 == "mosaic" { m[$6] = $2 } $1 == "file" { f[$6] = $2 }
    END { for (i in m) printf "%.3f\n", m[i] / f[i] }' "$work/results" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "median of the per-run ratios mosaic/file: $pairs"
echo "fastest boot: mosaic $(awk '$1 == "mosaic" { print $2 }' "$work/results" | sort -g | head -n 1) s," \
    "file $(awk '$1 == "file" { print $2 }' "$work/results" | sort -g | head -n 1) s"
echo "median CPU time of mosaic serve per boot: $(median mosaic 5) s"

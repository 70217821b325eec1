#!/usr/bin/env bash
# Try it: builds the VM's fragments (vm-images/build.sh), serves them with
# `mosaic serve` on a Unix socket, and boots a VM from that export with
# qemu's NBD client, its console on this terminal.
#
#   vm-images/run.sh [--out DIR] [--fresh] [--kvm] [--verbose] [--steps LIST]
#
#   --out DIR      build and state directory (default: vm-images/out)
#   --fresh        start the overlay over (serve --discard-overlay): the
#                  guest's earlier writes are dropped
#   --kvm          KVM instead of TCG
#   --verbose      kernel messages on the console
#   --steps LIST   what the guest's init does after booting (default: shell;
#                  e.g. write:hello,list to write, list and power off)
#
# In the guest: `mosaic-report`, `ls /etc/mosaic/fragments.d`, `cat /proc/mounts`;
# whatever you write persists in DIR/root.overlay across runs. `exit` powers
# the VM off; Ctrl-A X quits qemu at once. The server stops with the VM.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

out=$here/out
fresh='' qemu_opts=() steps=shell
while [ $# -gt 0 ]; do
    case "$1" in
    --out) out=${2:?--out DIR}; shift 2 ;;
    --fresh) fresh=1; shift ;;
    --kvm | --verbose) qemu_opts+=("$1"); shift ;;
    --steps) steps=${2:?--steps LIST}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
mosaic=${MOSAIC:-$repo/target/release/mosaic}
if [ ! -x "$mosaic" ] || [ -z "${MOSAIC:-}" ]; then
    # Keep the release binary current with the sources (quick when it is).
    (cd "$repo" && cargo build --release --quiet)
fi
export MOSAIC=$mosaic

"$here/build.sh" "$out"
out=$(cd "$out" && pwd)

socket=$out/nbd.sock
log=$out/serve.log
serve_opts=()
[ -n "$fresh" ] && serve_opts+=(--discard-overlay)
"$mosaic" serve "$out/volume.toml" --socket "$socket" "${serve_opts[@]}" 2>"$log" &
server=$!
stop_server() {
    if kill -0 "$server" 2>/dev/null; then
        kill -TERM "$server"
        wait "$server" || true
    fi
}
trap stop_server EXIT
# Wait (30 s at most) for the server to say it accepts.
for _ in $(seq 300); do
    grep -q '^listening on' "$log" && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "run.sh: mosaic serve exited:" >&2
        cat "$log" >&2
        if grep -q -i 'identity' "$log"; then
            echo "run.sh: the fragments changed since the overlay was made: run with --fresh (or mosaic overlay reset $out/volume.toml)" >&2
        fi
        exit 1
    fi
    sleep 0.1
done
grep -q '^listening on' "$log" || { echo "run.sh: mosaic serve did not start within 30 s:" >&2; cat "$log" >&2; exit 1; }

cat >&2 <<EOF
run.sh: serving $out/volume.toml (export "root") on $socket; server log: $log
run.sh: booting the VM (TCG: ~10 s to a shell). Ctrl-A X quits qemu; 'exit' in the guest powers off.
EOF
status=0
"$here/qemu.sh" --out "$out" --nbd "$socket" --export root --steps "$steps" "${qemu_opts[@]}" || status=$?
echo "run.sh: the guest's writes are in $out/root.overlay (mosaic overlay info $out/volume.toml)" >&2
exit "$status"

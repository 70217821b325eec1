#!/usr/bin/env bash
# Boots the mosaic VM (the kernel and initramfs vm-images/build.sh made) from
# an NBD export, with qemu's own NBD client, or from a raw image file.
#
#   vm-images/qemu.sh --nbd SOCKET [--export NAME] [options]
#   vm-images/qemu.sh --image FILE [options]
#
# Options:
#   --out DIR        where vmlinuz and initrd.img are (default: vm-images/out)
#   --steps LIST     what /sbin/init does after booting (mosaic.steps=, see
#                    vm-images/rootfs/base/sbin/init; default: shell)
#   --batch          serial console on stdin/stdout, no monitor (for scripts
#                    and tests); default: interactive console on the terminal
#                    (Ctrl-A X quits qemu, Ctrl-A H lists the keys)
#   --kvm            use KVM instead of TCG (TCG is the default: a KVM guest
#                    hung on some machines)
#   --verbose        kernel messages on the console (no "quiet")
#   --bzimage        boot vmlinuz (the kernel as Debian ships it, decompressing
#                    itself) even when build.sh made vmlinux (the same kernel
#                    decompressed, started at its PVH entry: ~5 s faster)
#   --memory SIZE    guest memory (default 512M)
#   -- ARGS...       more qemu arguments
#
# The guest's init prints "mosaic-vm: booted" once up and powers the VM off
# when its steps are done; qemu then exits (-no-reboot: a kernel panic exits
# too).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

out=$here/out
socket='' export_name=root image='' steps=shell batch='' accel=tcg quiet=quiet memory=512M bzimage=''
usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case "$1" in
    --nbd) socket=${2:?--nbd SOCKET}; shift 2 ;;
    --export) export_name=${2?--export NAME}; shift 2 ;;
    --image) image=${2:?--image FILE}; shift 2 ;;
    --out) out=${2:?--out DIR}; shift 2 ;;
    --steps) steps=${2:?--steps LIST}; shift 2 ;;
    --batch) batch=1; shift ;;
    --kvm) accel=kvm; shift ;;
    --verbose) quiet=; shift ;;
    --bzimage) bzimage=1; shift ;;
    --memory) memory=${2:?--memory SIZE}; shift 2 ;;
    --) shift; break ;;
    -h | --help) usage ;;
    *) echo "qemu.sh: unknown argument $1" >&2; usage ;;
    esac
done
if [ -n "$socket" ] && [ -z "$image" ]; then
    case "$socket" in /*) ;; *) socket=$PWD/$socket ;; esac
    drive="file=nbd+unix:///$export_name?socket=$socket,format=raw,if=virtio"
elif [ -n "$image" ] && [ -z "$socket" ]; then
    drive="file=$image,format=raw,if=virtio"
else
    echo "qemu.sh: give exactly one of --nbd SOCKET and --image FILE" >&2
    exit 2
fi
kernel=$out/vmlinux
[ -z "$bzimage" ] && [ -f "$kernel" ] || kernel=$out/vmlinuz
for f in "$kernel" "$out/initrd.img"; do
    [ -f "$f" ] || { echo "qemu.sh: $f is missing: run vm-images/build.sh first" >&2; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null 2>&1 ||
    { echo "qemu.sh: qemu-system-x86_64 is missing (on Debian: apt-get install qemu-system-x86)" >&2; exit 2; }

if [ -n "$batch" ]; then
    console=(-display none -monitor none -serial stdio)
else
    # shellcheck disable=SC2054 # commas belong to qemu's option syntax
    console=(-display none -chardev stdio,id=con,mux=on,signal=off -serial chardev:con -mon chardev=con)
fi
exec qemu-system-x86_64 \
    -nodefaults -no-user-config -no-reboot \
    -accel "$accel" -m "$memory" -smp 1 \
    -kernel "$kernel" -initrd "$out/initrd.img" \
    -append "console=ttyS0 root=/dev/vda rootfstype=ext4 rootflags=rw panic=-1 $quiet mosaic.steps=$steps" \
    -drive "$drive" \
    "${console[@]}" \
    "$@"

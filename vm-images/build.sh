#!/usr/bin/env bash
# The recipe of the mosaic VM: a small bootable Linux root made of three
# signed fragments, plus the kernel and initramfs that boot it.
#
#   vm-images/build.sh [OUT]          # default OUT: vm-images/out
#
# Fetches (once, into the cache) Debian's kernel (the package
# linux-image-amd64 depends on) and busybox-static with `apt-get download`,
# unpacks them with dpkg-deb, and writes to OUT:
#
#   vmlinuz, initrd.img   the kernel, and an initramfs (busybox + virtio/ext4
#                         modules and their dependencies) that mounts
#                         /dev/vda and switches root to it
#   vmlinux               the same kernel decompressed (PVH entry), which
#                         boots ~5 s faster under TCG
#   trees/{base,modules,app}/    the fragments' directory trees
#   base.frag      static busybox (+ applet links), /etc, /sbin/init; owns /
#   modules.frag   /lib/modules/KVER (the initramfs set + loop, overlay,
#                  squashfs, modules.dep) and a boot hook; owns /lib/modules
#   app.frag       /usr/bin/mosaic-report, /usr/share/mosaic-app (a 64 KiB
#                  payload the report checks at every boot) and a boot hook;
#                  owns /usr/share/mosaic-app
#   lab.key, lab.key.pub   the signing key (made once, then reused)
#   volume.toml    export "root" merging the three, overlay root.overlay
#
# /etc, /etc/mosaic/* and /usr are shared between the fragments; each
# fragment drops a line into /etc/mosaic/fragments.d and boot hooks into
# /etc/mosaic/boot.d. Same inputs, same key: byte-identical fragments (all
# mtimes are SOURCE_DATE_EPOCH, owners root when run as root), so re-running
# keeps the overlay valid.
#
# Environment:
#   MOSAIC            the mosaic binary (default: target/release/mosaic,
#                     built with cargo when missing)
#   MOSAIC_VM_CACHE   download and unpack cache (default: vm-images/.cache)
#   MOSAIC_VM_KERNEL  a kernel package name (default: what linux-image-amd64
#                     depends on; the newest one already in the cache wins)
#   SOURCE_DATE_EPOCH timestamps of every file (default 1700000000)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=${1:-$here/out}
cache=${MOSAIC_VM_CACHE:-$here/.cache}
epoch=${SOURCE_DATE_EPOCH:-1700000000}
export SOURCE_DATE_EPOCH=$epoch
export LC_ALL=C

say() { echo "vm-images: $*" >&2; }
die() {
    echo "vm-images: error: $*" >&2
    exit 2
}
need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is missing (on Debian: apt-get install $2)"
}
need apt-get apt
need apt-cache apt
need dpkg-deb dpkg
need cpio cpio
need sha256sum coreutils
need flock util-linux

mosaic=${MOSAIC:-$repo/target/release/mosaic}
if [ ! -x "$mosaic" ]; then
    [ -z "${MOSAIC:-}" ] || die "MOSAIC=$MOSAIC is not an executable"
    say "building mosaic (cargo build --release)"
    (cd "$repo" && cargo build --release --quiet) || die "cargo build --release failed"
fi

# ---------------------------------------------------------------------------
# Downloads: Debian packages, cached; apt-get update only when needed.

mkdir -p "$cache/debs" "$cache/unpacked"
# One build at a time fetches into the cache (tests and users may run at once).
exec 8>"$cache/.lock"
flock 8
apt_opts=()
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)
updated=
apt_update() {
    [ -z "$updated" ] || return 0
    updated=1
    say "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed (run this once as root, or fill $cache/debs by hand)"
}
# download PKG: PKG's .deb into the cache (an apt-get update and a retry on failure).
download() {
    say "apt-get download $1"
    if ! (cd "$cache/debs" && apt-get download -qq "${apt_opts[@]}" "$1" >&2); then
        apt_update
        (cd "$cache/debs" && apt-get download -qq "${apt_opts[@]}" "$1" >&2) ||
            die "apt-get download $1 failed"
    fi
}
# cached_deb PREFIX: the newest cached .deb whose name starts with PREFIX.
cached_deb() {
    local f
    f=$(cd "$cache/debs" && ls -1 -- "$1"*.deb 2>/dev/null | sort -V | tail -n 1)
    [ -n "$f" ] && echo "$cache/debs/$f"
}
# unpacked DEB: DEB unpacked (dpkg-deb -x) once into the cache; prints the directory.
unpacked() {
    local dir
    dir="$cache/unpacked/$(basename "$1" .deb)"
    if [ ! -e "$dir/.done" ]; then
        rm -rf "$dir" "$dir.tmp"
        dpkg-deb -x "$1" "$dir.tmp" || die "dpkg-deb -x $1 failed"
        touch "$dir.tmp/.done"
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

kpkg=${MOSAIC_VM_KERNEL:-}
if [ -z "$kpkg" ]; then
    kdeb=$(cached_deb linux-image- || true)
    if [ -z "$kdeb" ]; then
        resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'; }
        kpkg=$(resolve || true)
        if [ -z "$kpkg" ]; then
            apt_update
            kpkg=$(resolve || true)
        fi
        [ -n "$kpkg" ] || die "cannot tell which kernel package linux-image-amd64 depends on"
    fi
fi
if [ -n "$kpkg" ]; then
    kdeb=$(cached_deb "${kpkg}_" || true)
    if [ -z "$kdeb" ]; then
        download "$kpkg"
        kdeb=$(cached_deb "${kpkg}_") || die "no $kpkg .deb in $cache/debs after downloading it"
    fi
fi
bdeb=$(cached_deb busybox-static_ || true)
if [ -z "$bdeb" ]; then
    download busybox-static
    bdeb=$(cached_deb busybox-static_) || die "no busybox-static .deb in $cache/debs after downloading it"
fi
kroot=$(unpacked "$kdeb")
broot=$(unpacked "$bdeb")
busybox=$broot/bin/busybox
[ -x "$busybox" ] || die "$bdeb has no bin/busybox"
kver=$(ls -1 "$kroot/lib/modules" | head -n 1)
[ -n "$kver" ] && [ -f "$kroot/boot/vmlinuz-$kver" ] || die "$kdeb has no kernel image and modules"
kmods=$kroot/lib/modules/$kver
bbver=$(dpkg-deb -f "$bdeb" Version)
kdebver=$(dpkg-deb -f "$kdeb" Version)
say "kernel $kver ($(basename "$kdeb")), busybox $bbver"

exec 8>&-

# ---------------------------------------------------------------------------
# Kernel modules: name -> path, and dependency order.

declare -A KO=()
while IFS= read -r f; do
    n=${f##*/}
    n=${n%.ko}
    KO[${n//-/_}]=${f#"$kmods"/}
done < <(cd "$kmods" && find kernel -name '*.ko' | sort | sed "s|^|$kmods/|")
declare -A SEEN=()
ORDER=()
# add_module NAME: NAME after its dependencies (the .ko's depends= string).
add_module() {
    local n=${1//-/_} dep deps
    [ -n "${SEEN[$n]:-}" ] && return 0
    SEEN[$n]=1
    [ -n "${KO[$n]:-}" ] || die "kernel $kver has no module $n"
    deps=$(tr '\0' '\n' <"$kmods/${KO[$n]}" | sed -n 's/^depends=//p' | head -n 1)
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
    ORDER+=("$n")
}
# What the initramfs loads to mount the root: virtio-pci disk, ext4 with
# metadata_csum (crc32c is looked up through the crypto API, not depends=).
for m in virtio_pci virtio_blk crc32c_generic ext4; do
    add_module "$m"
done
initrd_modules=("${ORDER[@]}")
# What the modules fragment's boot hook loads on the booted system.
runtime_modules=(loop overlay squashfs)
for m in "${runtime_modules[@]}"; do
    add_module "$m"
done

# ---------------------------------------------------------------------------
# The fragments' trees.

mkdir -p "$out"
out=$(cd "$out" && pwd)
# One build at a time writes OUT; every output but trees/ is replaced by a
# rename, and is byte-identical when the inputs are, so a VM or a server
# using OUT meanwhile keeps working.
exec 9>"$out/.lock"
flock 9
trees=$out/trees
rm -rf "$trees" "$out/initramfs.d"
mkdir -p "$trees"
is_root=
[ "$(id -u)" = 0 ] && is_root=1

# normalize DIR: fixed modes (directories 0755, files 0644, executables 0755),
# root ownership when run as root, every mtime SOURCE_DATE_EPOCH.
normalize() {
    find "$1" -type d -exec chmod 0755 {} +
    find "$1" -type f -perm /111 -exec chmod 0755 {} +
    find "$1" -type f ! -perm /111 -exec chmod 0644 {} +
    if [ -n "$is_root" ]; then chown -hR 0:0 "$1"; fi
    find "$1" -exec touch -h -d "@$epoch" {} +
}

# base: busybox and its applet links, /etc, /sbin/init, the top directories.
b=$trees/base
cp -R "$here/rootfs/base" "$b"
chmod 0755 "$b/sbin/init"
mkdir -p "$b/bin" "$b/sbin" "$b/usr/bin" "$b/usr/sbin" "$b/lib" "$b/dev" "$b/proc" "$b/sys" \
    "$b/run" "$b/tmp" "$b/root" "$b/mnt" "$b/var/lib" "$b/etc/mosaic/fragments.d" "$b/etc/mosaic/boot.d"
install -m 0755 "$busybox" "$b/bin/busybox"
"$busybox" --list-full | sort | while IFS= read -r applet; do
    case "$applet" in
    bin/busybox | sbin/init | linuxrc | "") continue ;;
    esac
    [ -e "$b/$applet" ] || [ -L "$b/$applet" ] || ln -s /bin/busybox "$b/$applet"
done
echo "base 1.0: busybox $bbver (Debian busybox-static), /etc, /sbin/init" >"$b/etc/mosaic/fragments.d/base"
normalize "$b"
chmod 0700 "$b/root"
chmod 1777 "$b/tmp"

# modules: the kernel modules this VM uses, with modules.dep (busybox depmod, sorted).
m=$trees/modules
cp -R "$here/rootfs/modules" "$m"
mkdir -p "$m/lib/modules/$kver" "$m/etc/mosaic/fragments.d"
for n in "${ORDER[@]}"; do
    mkdir -p "$m/lib/modules/$kver/$(dirname "${KO[$n]}")"
    cp "$kmods/${KO[$n]}" "$m/lib/modules/$kver/${KO[$n]}"
done
cp "$kmods/modules.builtin" "$kmods/modules.order" "$m/lib/modules/$kver/"
"$busybox" depmod -b "$m" "$kver"
for f in modules.dep modules.alias modules.symbols; do
    if [ -f "$m/lib/modules/$kver/$f" ]; then sort -o "$m/lib/modules/$kver/$f" "$m/lib/modules/$kver/$f"; fi
done
printf '%s\n' "${runtime_modules[@]}" >"$m/lib/modules/$kver/mosaic.load"
echo "modules $kdebver: ${#ORDER[@]} modules of Debian's kernel $kver" >"$m/etc/mosaic/fragments.d/modules"
normalize "$m"

# app: the report, its payload (64 KiB the report checks at boot), a boot hook.
a=$trees/app
cp -R "$here/rootfs/app" "$a"
chmod 0755 "$a/usr/bin/mosaic-report"
mkdir -p "$a/usr/share/mosaic-app" "$a/etc/mosaic/fragments.d"
awk 'BEGIN { for (i = 0; i < 4096; i++) printf "mosaic-app %06d\n", i }' >"$a/usr/share/mosaic-app/payload.txt"
sha256sum "$a/usr/share/mosaic-app/payload.txt" | cut -d' ' -f1 >"$a/usr/share/mosaic-app/payload.sha256"
echo "app 1.0: mosaic-report and its payload" >"$a/etc/mosaic/fragments.d/app"
normalize "$a"

# ---------------------------------------------------------------------------
# Kernel and initramfs.

install -m 0644 "$kroot/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$out/vmlinuz.tmp" "$out/vmlinuz"
# The same kernel decompressed: an ELF that qemu -kernel starts at its PVH
# entry point, sparing the guest the bzImage's xz decompression (~5 s of a
# ~11 s boot under TCG). Made when the kernel has CONFIG_PVH and xz is
# installed; qemu.sh prefers it (--bzimage boots vmlinuz instead).
# extract_vmlinux BZIMAGE OUT: the payload (setup header fields
# payload_offset/payload_length; its last 4 bytes are the decompressed size).
extract_vmlinux() {
    local f=$1 setup po pl size
    setup=$((($(od -An -t u1 -j $((0x1f1)) -N 1 "$f") + 1) * 512))
    po=$(od -An -t u4 -j $((0x248)) -N 4 "$f")
    pl=$(od -An -t u4 -j $((0x24c)) -N 4 "$f")
    size=$(od -An -t u4 -j $((setup + po + pl - 4)) -N 4 "$f")
    [ "$(od -An -t x1 -j $((setup + po)) -N 6 "$f")" = " fd 37 7a 58 5a 00" ] || return 1
    dd if="$f" iflag=skip_bytes,count_bytes skip=$((setup + po)) count=$((pl - 4)) status=none |
        xz -dc >"$2.tmp" || return 1
    [ "$(stat -c %s "$2.tmp")" = $((size)) ] || return 1
    [ "$(od -An -c -N 4 "$2.tmp")" = " 177   E   L   F" ] || return 1
    mv "$2.tmp" "$2"
}
rm -f "$out/vmlinux"
if ! grep -q '^CONFIG_PVH=y' "$kroot/boot/config-$kver"; then
    say "kernel $kver has no PVH entry: booting the bzImage (vmlinuz)"
elif ! command -v xz >/dev/null 2>&1; then
    say "xz is missing (apt-get install xz-utils): booting the bzImage (vmlinuz), ~5 s slower"
elif ! extract_vmlinux "$out/vmlinuz" "$out/vmlinux"; then
    rm -f "$out/vmlinux.tmp"
    say "could not decompress $out/vmlinuz (not xz?): booting the bzImage"
fi
i=$out/initramfs.d
mkdir -p "$i/bin" "$i/lib/modules" "$i/dev" "$i/proc" "$i/sys" "$i/newroot"
install -m 0755 "$busybox" "$i/bin/busybox"
for applet in $("$busybox" --list | sort); do
    [ "$applet" = busybox ] || ln -s busybox "$i/bin/$applet"
done
install -m 0755 "$here/initramfs/init" "$i/init"
for n in "${initrd_modules[@]}"; do
    cp "$kmods/${KO[$n]}" "$i/lib/modules/$n.ko"
done
printf '%s\n' "${initrd_modules[@]}" >"$i/lib/modules/order"
normalize "$i"
(cd "$i" && find . -mindepth 1 -print0 | sort -z |
    cpio --null -o -H newc --reproducible -R 0:0 --quiet) >"$out/initrd.img.tmp"
mv "$out/initrd.img.tmp" "$out/initrd.img"
rm -rf "$i"

# ---------------------------------------------------------------------------
# Key, fragments, manifest.

[ -f "$out/lab.key" ] || "$mosaic" keygen -o "$out/lab.key" >&2
build() { # NAME OWNS...
    local name=$1
    shift
    local owns=()
    for o in "$@"; do owns+=(--owns "$o"); done
    rm -f "$out/$name.frag.tmp"
    "$mosaic" fragment build "$trees/$name" -o "$out/$name.frag.tmp" --key "$out/lab.key" \
        --name "$name" --version 1.0 "${owns[@]}" >/dev/null
    mv "$out/$name.frag.tmp" "$out/$name.frag"
}
build base /
build modules /lib/modules
build app /usr/share/mosaic-app

cat >"$out/volume.toml" <<EOF
# The mosaic VM root (made by vm-images/build.sh): three fragments merged into one ext4 volume.
name = "root"
fragments = ["base.frag", "modules.frag", "app.frag"]
trust = ["lab.key.pub"]

[filesystem]
label = "mosaic-vm"
free = "256MiB"

[overlay]
path = "root.overlay"
EOF
"$mosaic" volume check "$out/volume.toml" >/dev/null || die "mosaic volume check $out/volume.toml failed"
say "ready in $out: vmlinuz$([ -f "$out/vmlinux" ] && echo ' vmlinux') initrd.img base.frag modules.frag app.frag volume.toml (kernel $kver)"

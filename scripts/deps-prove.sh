#!/usr/bin/env bash
# Proves scripts/deps.sh on the state of a new machine without touching this
# one: builds a Debian chroot with mmdebstrap, puts it in the state named by
# CASE, runs scripts/deps.sh inside it and checks the result (every tool the
# tests drive runs, and qemu-img and qemu-system-x86_64 report one version).
#
#   scripts/deps-prove.sh new     # qemu-utils from <codename>-backports preinstalled, backports not in the sources (new machines)
#   scripts/deps-prove.sh old     # the distribution's qemu-utils preinstalled (older machines)
#   scripts/deps-prove.sh bare    # no qemu at all
#   scripts/deps-prove.sh all     # the three, one after the other
#
# The chroot's apt sources are a copy of this machine's Debian source; it
# is built in a temporary directory and removed afterwards (KEEP=1 keeps it).
# Needs root and mmdebstrap (installed when missing). Takes a few minutes
# per case, most of it downloading qemu.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "deps-prove: must run as root (chroot, mounts)" >&2; exit 2; }
command -v mmdebstrap >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap; }

# shellcheck disable=SC1091
code=$(. /etc/os-release && echo "$VERSION_CODENAME")
# shellcheck disable=SC2016
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' |
  awk -v s="$code" '$2 == s && $3 == "deb" { print $1; exit }')
[ -n "$mirror" ] || { echo "deps-prove: no Debian source for $code on this machine" >&2; exit 2; }

prove() {
  local case=$1 root
  root=$(mktemp -d /tmp/mosaic-deps-prove.XXXXXX)
  echo "== deps-prove $case: chroot $root ($code from $mirror)"
  local setup
  case "$case" in
    new)
      setup="echo 'deb $mirror $code-backports main' > /etc/apt/sources.list.d/tmp-bpo.list &&
             apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t $code-backports qemu-utils &&
             rm /etc/apt/sources.list.d/tmp-bpo.list" ;;
    old) setup="DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-utils" ;;
    bare) setup="true" ;;
    *) echo "deps-prove: unknown case $case (new, old, bare, all)" >&2; return 2 ;;
  esac
  local sources=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && grep -q "^Suites:.* $code\b\|^Suites: $code\b" "$f" && sources=$f && break
  done
  local rc=0 check
  check=$(mktemp)
  cat >"$check" <<'CHECK'
set -e
v1=$(qemu-img --version | sed -n '1s/.*version \([0-9.]*\).*/\1/p')
v2=$(qemu-system-x86_64 --version | sed -n '1s/.*version \([0-9.]*\).*/\1/p')
echo "qemu-img $v1, qemu-system-x86_64 $v2"
[ -n "$v1" ] && [ "$v1" = "$v2" ] || { echo "qemu versions differ"; exit 1; }
qemu-img create -f qcow2 /tmp/t.qcow2 1M >/dev/null
qemu-io -c 'write 0 4k' /tmp/t.qcow2 >/dev/null
qemu-system-x86_64 -machine help >/dev/null
nbdinfo --version >/dev/null
nbdkit --version >/dev/null
fio --version >/dev/null
/usr/bin/python3 -c 'import nbd'
echo "tools run"
CHECK
  # The hooks run inside the chroot with /proc, /sys and /dev mounted.
  mmdebstrap --mode=root --variant=apt --include=ca-certificates,procps "$code" "$root" "$mirror" \
    --customize-hook="[ -z '$sources' ] || { cp '$sources' \"\$1/etc/apt/sources.list.d/\" && rm -f \"\$1/etc/apt/sources.list\"; }" \
    --customize-hook="chroot \"\$1\" sh -c \"apt-get update -qq && $setup\"" \
    --customize-hook="echo '-- before:'; chroot \"\$1\" dpkg-query -W -f='\${Package} \${Version}\n' qemu-utils qemu-system-x86 2>&1 || true" \
    --customize-hook="mkdir -p \"\$1/mosaic/scripts\" && cp scripts/deps.sh \"\$1/mosaic/scripts/\"" \
    --customize-hook="chroot \"\$1\" /mosaic/scripts/deps.sh" \
    --customize-hook="chroot \"\$1\" /mosaic/scripts/deps.sh --check" \
    --customize-hook="cp '$check' \"\$1/mosaic/check.sh\" && chroot \"\$1\" sh /mosaic/check.sh" \
    --customize-hook="echo '-- after:'; chroot \"\$1\" dpkg-query -W -f='\${Package} \${Version}\n' qemu-utils qemu-system-x86 qemu-system-common; ls \"\$1/etc/apt/sources.list.d/\"" \
    || rc=$?
  rm -f "$check"
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $root"; else rm -rf "$root"; fi
  if [ "$rc" = 0 ]; then echo "== deps-prove $case: ok"; else echo "== deps-prove $case: FAILED ($rc)"; fi
  return "$rc"
}

if [ "${1:-}" = all ]; then
  status=0
  for c in new old bare; do prove "$c" || status=1; done
  exit "$status"
fi
prove "${1:?usage: scripts/deps-prove.sh new|old|bare|all}"

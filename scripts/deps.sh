#!/usr/bin/env bash
# Installs the system packages mosaic's tests drive, when they are missing,
# with one consistent qemu whatever the machine came with. `scripts/test.sh`
# calls it first; it is safe to run again (it does nothing when all is there).
#
#   scripts/deps.sh            # install what is missing, print what it did
#   scripts/deps.sh --check    # only report what is missing (exit 1 if any)
#
# The qemu rule. The tests drive qemu-utils (qemu-img, qemu-io) and
# qemu-system-x86 (the VM boot tests), and the two must come from one qemu
# release: qemu-utils 10 (bookworm-backports) `Breaks: qemu-system-common
# (<< 1:8.0)`, so Debian 12's qemu-system-x86 7.2 cannot join a backported
# qemu-utils. When the machine has a qemu-utils newer than any
# qemu-system-x86 its apt sources offer, this script
#   1. adds `<codename>-backports` as a list file of its own
#      (/etc/apt/sources.list.d/mosaic-backports.sources), its address and
#      keyring taken at run time from the machine's own Debian source (it
#      never edits the machine's own source files), and installs
#      qemu-system-x86 and qemu-utils from there together;
#   2. if that is refused, pins qemu-utils and qemu-block-extra back to the
#      version of the distribution's qemu-system-x86 (--allow-downgrades);
#   3. if that fails too, exits 2 naming the packages.
# A machine with the distribution's own qemu-utils (or none) simply gets the
# distribution's qemu-system-x86 beside it.
set -euo pipefail

check_only=0
[ "${1:-}" = --check ] && check_only=1

say() { echo "deps: $*"; }
die() { echo "deps: error: $*" >&2; exit 2; }

# tool -> Debian package providing it
declare -A PKG=(
  [openssl]=openssl
  [diff]=diffutils
  [cmp]=diffutils
  [e2fsck]=e2fsprogs
  [debugfs]=e2fsprogs
  [dumpe2fs]=e2fsprogs
  [mount]=mount
  [losetup]=mount
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdkit]=nbdkit
  [fio]=fio
  [qemu-system-x86_64]=qemu-system-x86
  [cpio]=cpio
  [dpkg-deb]=dpkg
  [apt-get]=apt
  [xz]=xz-utils
)

missing_packages() {
  local tool
  local -A seen=()
  for tool in "${!PKG[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || seen[${PKG[$tool]}]=1
  done
  # libnbd's Python module (the multi-connection tests drive it), in Debian's python.
  /usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || seen[python3-libnbd]=1
  printf '%s\n' "${!seen[@]}" | sort
}

# The installed version of PACKAGE (empty if it is not installed).
installed_version() { { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } | awk '$1 == "ii" { print $2 }'; }

# The version of PACKAGE offered by suite SUITE (empty if none).
offered_in() {
  apt-cache madison "$1" 2>/dev/null | awk -F'|' -v s="$2" '$3 ~ (" " s "/") { gsub(/ /, "", $2); print $2; exit }'
}

# shellcheck disable=SC1091
codename() { . /etc/os-release && echo "${VERSION_CODENAME:?/etc/os-release names no VERSION_CODENAME}"; }

# The machine's own Debian source for the release: "URI|SIGNED_BY".
debian_source() {
  local suite=$1 uri signed=""
  # shellcheck disable=SC2016
  uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' 2>/dev/null |
    awk -v s="$suite" '$2 == s && $3 == "deb" { print $1; exit }')
  [ -n "$uri" ] || return 1
  # Signed-By of the deb822 stanza (or one-line entry) that carries this suite.
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    signed=$(awk -v s="$suite" '
      BEGIN { RS = ""; FS = "\n" }
      {
        suites = ""; by = ""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^Suites:/) suites = " " substr($i, 8) " "
          if ($i ~ /^Signed-By:/) { by = substr($i, 11); gsub(/^ +| +$/, "", by) }
        }
        if (suites ~ (" " s " ") && by != "") { print by; exit }
      }' "$f")
    [ -n "$signed" ] && break
  done
  if [ -z "$signed" ]; then
    signed=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      sed -n "s/^deb \[.*signed-by=\([^] ]*\).*\] [^ ]* $suite .*/\1/p" | head -n1)
  fi
  echo "${uri%/}|$signed"
}

add_backports() {
  local code=$1 src uri signed list=/etc/apt/sources.list.d/mosaic-backports.sources
  src=$(debian_source "$code") || { say "no Debian source for $code in the machine's apt sources"; return 1; }
  uri=${src%%|*}
  signed=${src#*|}
  say "adding $code-backports from $uri (own list file $list)"
  {
    echo "# Written by mosaic's scripts/deps.sh: qemu-system-x86 to match a backported qemu-utils."
    echo "Types: deb"
    echo "URIs: $uri"
    echo "Suites: $code-backports"
    echo "Components: main"
    [ -n "$signed" ] && echo "Signed-By: $signed"
  } >"$list"
  apt-get update -qq
}

apt_install() {
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 "$@"
}

# Installs qemu-utils and qemu-system-x86 from one release, together with
# the other packages given as arguments.
install_qemu_pair() {
  local utils code sys_main
  utils=$(installed_version qemu-utils)
  code=$(codename)
  if [ -z "$utils" ]; then
    say "qemu-utils not installed: taking qemu-utils and qemu-system-x86 from $code"
    apt_install "$@" qemu-utils qemu-system-x86
    return
  fi
  sys_main=$(offered_in qemu-system-x86 "$code")
  if [ -n "$sys_main" ] && dpkg --compare-versions "$sys_main" ge "$utils"; then
    say "qemu-utils $utils installed; $code offers qemu-system-x86 $sys_main: installing both together"
    apt_install "$@" qemu-utils qemu-system-x86
    return
  fi
  say "qemu-utils $utils is newer than $code's qemu-system-x86 (${sys_main:-none}): taking qemu from $code-backports"
  if [ -z "$(offered_in qemu-system-x86 "$code-backports")" ]; then
    add_backports "$code" || true
  fi
  if [ -n "$(offered_in qemu-system-x86 "$code-backports")" ]; then
    # The other packages from the release itself, then qemu with
    # -t so that its versioned dependencies (qemu-system-common,
    # qemu-system-data, seabios, ...) come from backports too.
    [ $# -eq 0 ] || apt_install "$@"
    if apt_install -t "$code-backports" qemu-system-x86 qemu-utils; then
      say "qemu from $code-backports: qemu-utils $(installed_version qemu-utils), qemu-system-x86 $(installed_version qemu-system-x86)"
      return
    fi
    say "installing qemu-system-x86 from $code-backports was refused"
  fi
  [ -n "$sys_main" ] || die "no qemu-system-x86 offered for $code; cannot match qemu-utils $utils (packages: qemu-utils, qemu-system-x86)"
  say "falling back: pinning qemu-utils and qemu-block-extra to $sys_main (--allow-downgrades)"
  local extra=()
  [ -n "$(installed_version qemu-block-extra)" ] && extra+=("qemu-block-extra=$sys_main")
  apt_install --allow-downgrades "$@" "qemu-utils=$sys_main" "${extra[@]}" "qemu-system-x86=$sys_main" ||
    die "could not install a matching qemu: qemu-utils $utils is installed, qemu-system-x86 $sys_main is offered (packages: qemu-utils, qemu-block-extra, qemu-system-x86)"
}

mapfile -t missing < <(missing_packages | sed '/^$/d')

if [ "$check_only" = 1 ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    say "missing: ${missing[*]}"
    exit 1
  fi
  say "all test tools present"
  exit 0
fi

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; run as root to install them"
  say "missing: ${missing[*]}"
  apt-get update -qq
  others=()
  need_qemu=0
  for p in "${missing[@]}"; do
    case "$p" in
      qemu-utils | qemu-system-x86) need_qemu=1 ;;
      *) others+=("$p") ;;
    esac
  done
  if [ "$need_qemu" = 1 ]; then
    install_qemu_pair "${others[@]}"
  else
    apt_install "${others[@]}"
  fi
fi

# Verify: every tool there, and both qemu packages from one release.
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is still missing after installing ${PKG[$tool]}"
done
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || die "python3-libnbd is still missing (import nbd in /usr/bin/python3)"
u=$(installed_version qemu-utils)
s=$(installed_version qemu-system-x86)
if [ -n "$u" ] && [ -n "$s" ] && [ "${u%%.*}" != "${s%%.*}" ]; then
  die "qemu-utils $u and qemu-system-x86 $s are from different qemu releases (packages: qemu-utils, qemu-system-x86)"
fi
say "ready: qemu-utils ${u:-?}, qemu-system-x86 ${s:-?}, $(qemu-img --version | head -n1)"

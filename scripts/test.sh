#!/usr/bin/env bash
# Runs every test of mosaic on a fresh machine: installs the system tools
# the tests use when they are missing, then format, lint, fuzz (briefly) and
# the whole cargo test suite. `.ci/run` calls exactly this.
#
#   scripts/test.sh              # everything
#   FUZZ_SECONDS=0 scripts/test.sh   # skip the fuzzing pass (local iterations)
set -euo pipefail
cd "$(dirname "$0")/.."

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
missing=()
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PKG[$tool]}")
done
# libnbd's Python module (the multi-connection tests drive it), in Debian's python.
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing+=(python3-libnbd)
if [ ${#missing[@]} -gt 0 ]; then
  # qemu-system-x86 can pull a newer qemu-system-common that conflicts with
  # an older preinstalled qemu-utils (apt then removes qemu-img/qemu-io):
  # install them together so apt upgrades both.
  case " ${missing[*]} " in *" qemu-system-x86 "*) missing+=(qemu-utils) ;; esac
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
for tool in "${!PKG[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is still missing after installing ${PKG[$tool]}" >&2; exit 2; }
done
/usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || { echo "error: python3-libnbd is still missing (import nbd in /usr/bin/python3)" >&2; exit 2; }
# The ext4 tests loop-mount images: they need root.
[ "$(id -u)" = 0 ] || { echo "error: the tests loop-mount images and must run as root" >&2; exit 2; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --workspace -- -D warnings

if [ "${FUZZ_SECONDS:-60}" != 0 ]; then
  echo "== fuzz (${FUZZ_SECONDS:-60} s)"
  scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --doc 2>&1 | tee "$log"
cargo test --workspace --all-targets 2>&1 | tee -a "$log"
# One closing line over every test binary (doc tests first, so the last
# runner line is never an empty doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f; if (p == 0) exit 1 }' "$log"

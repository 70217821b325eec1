#!/usr/bin/env bash
# Runs every test of mosaic on a fresh machine: installs the system tools
# the tests use when they are missing, then format, lint, fuzz (briefly) and
# the whole cargo test suite. `.ci/run` calls exactly this.
#
#   scripts/test.sh              # everything
#   FUZZ_SECONDS=0 scripts/test.sh   # skip the fuzzing pass (local iterations)
set -euo pipefail
cd "$(dirname "$0")/.."

# The system tools the tests drive, with one consistent qemu (scripts/deps.sh
# says how); fails naming the packages when they cannot be installed.
scripts/deps.sh
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

#!/usr/bin/env bash
# Fuzzes the fragment parsers for SECONDS in total (default 60), split
# evenly between the targets, with libFuzzer (+ AddressSanitizer).
#
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_TARGETS="fragment_resigned" scripts/fuzz.sh 600   # one target
#   FUZZ_SANITIZER=none scripts/fuzz.sh                    # no ASan, faster
#   MOSAIC_FUZZ_SKIP_KNOWN=0 scripts/fuzz.sh               # re-find known bugs too
#
# Installs cargo-fuzz when missing, regenerates the seed corpora
# (scripts/fuzz-seeds.sh), then runs each target. Inputs hitting a bug
# already kept in fuzz/regressions/ (`known_bug` in fuzz/src/lib.rs) are
# skipped, so the run looks for new ones; the regression test still fails
# on the known ones until they are fixed. A crash, leak, timeout or
# out-of-memory input is copied to fuzz/regressions/<target>/ (replayed by
# `cargo test --test fuzz_regressions`) and the script exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."

total=${1:-60}
read -r -a targets <<<"${FUZZ_TARGETS:-fragment_open fragment_unsigned_parse fragment_resigned update_tables}"
sanitizer=${FUZZ_SANITIZER:-address}
share=$(( total / ${#targets[@]} ))
[ "$share" -ge 1 ] || share=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

scripts/fuzz-seeds.sh

# cargo fuzz passes -Zsanitizer and friends: the toolchain here is stable.
export RUSTC_BOOTSTRAP=1
export MOSAIC_FUZZ_SKIP_KNOWN=${MOSAIC_FUZZ_SKIP_KNOWN:-1}

status=0
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${share} s (sanitizer: $sanitizer)"
  rm -rf "fuzz/artifacts/$t"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  set +e
  cargo fuzz run -s "$sanitizer" "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$share" -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -timeout=30 -print_final_stats=1 2>&1 | tee "fuzz/artifacts/$t.log" \
    | grep -E --line-buffered '^(#[0-9]+[[:space:]]+(INITED|DONE)|stat::|==[0-9]+==|SUMMARY|thread .* panicked|Test unit written|artifact_prefix|ERROR)'
  rc=${PIPESTATUS[0]}
  set -e
  found=0
  for a in "fuzz/artifacts/$t"/*; do
    [ -f "$a" ] || continue
    mkdir -p "fuzz/regressions/$t"
    cp "$a" "fuzz/regressions/$t/"
    echo "!! $t: $(basename "$a") -> fuzz/regressions/$t/ (log: fuzz/artifacts/$t.log)"
    found=1
  done
  if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
    echo "!! $t failed (exit $rc); reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $t fuzz/regressions/$t/<file>"
    status=1
  fi
done
exit "$status"

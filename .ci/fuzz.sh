#!/usr/bin/env bash
# Enlace's fuzzing pass: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS (20 by default) each,
# starting from its committed corpus (fuzz/corpus/<target>/), on the stable toolchain. Fails on
# the first crash; libFuzzer leaves the input in fuzz/artifacts/<target>/. New inputs go to a
# scratch directory, so the committed corpus changes only by hand (README, "Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# libfuzzer-sys compiles libFuzzer, which is C++.
if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++
  else
    echo "missing: a C++ compiler — as root on Debian: apt-get install -y g++" >&2
    exit 1
  fi
fi

# `--sanitizer none`: cargo-fuzz then passes only flags stable rustc accepts (the sanitizers
# need nightly, which a fresh machine does not have; safe Rust needs them least). Sixteen
# codegen units instead of cargo-fuzz's one: a build several times shorter, for somewhat slower
# runs, which for runs this short is the better trade.
build=(--sanitizer none --codegen-units 16)
cd fuzz
echo "== cargo fuzz build (stable, no sanitizer)"
cargo +stable fuzz build "${build[@]}"

scratch="$(mktemp -d -t enlace-fuzz.XXXXXX)"
trap 'rm -rf "$scratch"' EXIT
targets=$(cargo +stable fuzz list)
ran=0
for target in $targets; do
  mkdir -p "$scratch/$target"
  echo "== fuzz $target for ${seconds}s"
  cargo +stable fuzz run "${build[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
    2>&1 | tail -n 40
  ran=$((ran + 1))
done
echo "fuzz: ${ran} passed, 0 failed"

#!/usr/bin/env bash
# Enlace's test command: installs what the tests need from Debian's packages (as root; otherwise
# it says what to install) and runs the whole suite: the workspace's tests, then the API fuzzing
# of the registry and the node (.ci/schemathesis.sh), then every fuzz target for a bounded time
# (.ci/fuzz.sh). The README names it and `.ci/run` calls it.
# Needs the Rust toolchain and the machine's Python; every test runs on loopback.
set -euo pipefail
cd "$(dirname "$0")"

need_pkgs=()
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v promtool >/dev/null 2>&1 || need_pkgs+=(prometheus)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing from Debian: ${need_pkgs[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}"
  else
    echo "missing: ${need_pkgs[*]} — as root on Debian: apt-get install -y --no-install-recommends ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

echo "== independent check of the captured RFC 9421 example (docs/examples)"
if ! python3 -c "import cryptography" 2>/dev/null; then
  python3 -m pip install --quiet cryptography
fi
python3 docs/examples/verify_captured.py > /dev/null

echo "== cargo test --workspace"
log="$(mktemp -t enlace-test.XXXXXX)"
cargo test --workspace 2>&1 | tee "$log"
# Fail loudly if the test runner ran nothing at all.
passed=$(grep -E '^test result: ok\.' "$log" | awk '{s+=$4} END {print s+0}')
echo "== ${passed} tests passed"
[ "${passed}" -gt 0 ]

./.ci/prometheus-rules.sh
./.ci/schemathesis.sh
./.ci/fuzz.sh

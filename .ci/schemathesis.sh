#!/usr/bin/env bash
# API fuzzing: schemathesis over the registry's OpenAPI document (unauthenticated, then as a
# citizen, a member admin and the federation admin) and over the SII node's consumer listener
# (unauthenticated, then with the demo's backend token) and its admin listener, against a real
# `enlace up`. Fails on any finding: a server error, a status code, content type or body the
# document does not describe. Bounded: SCHEMATHESIS_MAX_TIME seconds per run (30), SCHEMATHESIS_MAX_EXAMPLES
# examples per operation (10), seven runs.
set -euo pipefail
cd "$(dirname "$0")/.."

max_time="${SCHEMATHESIS_MAX_TIME:-30}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-10}"
# Below the kernel's ephemeral range (32768–60999), so that no outgoing connection holds one.
base_port="${SCHEMATHESIS_BASE_PORT:-29300}"
target="${CARGO_TARGET_DIR:-target}"
venv="$target/schemathesis-venv"

echo "== schemathesis: installing .ci/schemathesis-requirements.txt into $venv"
if [ ! -x "$venv/bin/schemathesis" ] || ! cmp -s .ci/schemathesis-requirements.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet -r .ci/schemathesis-requirements.txt
  cp .ci/schemathesis-requirements.txt "$venv/requirements.txt"
fi

echo "== schemathesis: cargo build -p enlace"
cargo build --quiet -p enlace

work="$(mktemp -d -t enlace-schemathesis.XXXXXX)"
up_pid=""
cleanup() {
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -INT "$up_pid"
    wait "$up_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$target/debug/enlace" up --dir "$work/data" --base-port "$base_port" >"$work/up.log" 2>&1 &
up_pid=$!
for _ in $(seq 1 120); do
  grep -q "demo federation .* is up" "$work/up.log" && break
  kill -0 "$up_pid" 2>/dev/null || { cat "$work/up.log"; echo "enlace up exited" >&2; exit 1; }
  sleep 1
done
grep -q "demo federation .* is up" "$work/up.log" || { cat "$work/up.log"; echo "enlace up did not come up" >&2; exit 1; }

field() { grep -F "$1" "$work/up.log" | head -n 1 | awk '{print $NF}'; }
registry="http://127.0.0.1:$base_port"
# Ports::from_base: registry, backend, gRPC backend, RC provider/consumer/admin, SII provider/consumer/admin.
sii_consumer="http://127.0.0.1:$((base_port + 7))"
sii_admin="http://127.0.0.1:$((base_port + 8))"
admin_token="$(field 'federation admin token')"
member_token="$(field 'Registro Civil admin token')"
backend_token="$(field 'SII renta backend token')"
citizen_token="$(python3 - "$registry" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(
    sys.argv[1] + "/oidc/dev/token",
    data=json.dumps({"sub": "CL-RUN:12345678-5"}).encode(),
    headers={"content-type": "application/json"},
)
print(json.load(urllib.request.urlopen(req))["id_token"])
PY
)"
for t in "$admin_token" "$member_token" "$backend_token" "$citizen_token"; do
  [ -n "$t" ] || { cat "$work/up.log"; echo "a token is missing from enlace up's output" >&2; exit 1; }
done

failed=()
# One worker: with two, Python 3.11's ast module fails now and then inside hypothesis
# ("AST constructor recursion depth mismatch"), an error of the tool, not of the API.
run() {
  local name="$1" base="$2" token="$3"
  local auth=()
  [ -n "$token" ] && auth=(-H "Authorization: Bearer $token")
  echo "== schemathesis: $name"
  if ! "$venv/bin/schemathesis" --no-color --config-file .ci/schemathesis.toml run \
    "$base${4}" --url "$base" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$max_examples" --max-time "$max_time" --workers 1 \
    --request-timeout 15 --suppress-health-check filter_too_much,too_slow \
    --seed 1 "${auth[@]}" >"$work/$name.log" 2>&1; then
    cat "$work/$name.log"
    failed+=("$name")
  else
    tail -n 6 "$work/$name.log"
  fi
}

# The nodes first and the federation admin last: the admins' runs revoke and change what the
# runs before them rely on (tokens, contracts, nodes).
run node-admin "$sii_admin" "" /openapi.json
run node-anonymous "$sii_consumer" "" /meta/openapi.json
run node-backend "$sii_consumer" "$backend_token" /meta/openapi.json
run registry-anonymous "$registry" "" /openapi.json
run registry-citizen "$registry" "$citizen_token" /openapi.json
run registry-member-admin "$registry" "$member_token" /openapi.json
run registry-federation-admin "$registry" "$admin_token" /openapi.json

if [ "${#failed[@]}" -gt 0 ]; then
  echo "schemathesis found problems in: ${failed[*]}" >&2
  exit 1
fi
echo "== schemathesis: no findings"

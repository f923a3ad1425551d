#!/usr/bin/env bash
# The OpenAPI document, checked by tools we did not write: openapi-spec-validator (is it valid
# OpenAPI 3.1?) and schemathesis (does the running binary do what it says?), both pinned, in a
# virtualenv under target/. The server runs with the echo provider and a key; the fuzzer runs for
# SCHEMATHESIS_SECS (default 150) and must find nothing.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/schemathesis-venv
req=tests/schemathesis/requirements.txt
if ! cmp -s "$req" "$venv/requirements.txt" 2>/dev/null; then
  echo "schemathesis: installing the pinned tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
cargo build --locked --quiet --bin agent-api
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
env -i PATH="$PATH" HOME="$HOME" HOST=127.0.0.1 PORT="$port" LLM_PROVIDER=echo ECHO_DELAY_MS=0 \
  API_KEYS=fuzz=fuzz-key RATE_LIMIT_PER_MINUTE=1000000000 RATE_LIMIT_BURST=1000000000 \
  MAX_STREAMS_PER_KEY=100000 RUST_LOG=warn target/debug/agent-api >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -sf -o /dev/null "$base/health" && break; sleep 0.1; done
spec=$(mktemp --suffix=.json)
curl -sf "$base/openapi.json" -o "$spec"
"$venv/bin/openapi-spec-validator" "$spec"
rm -f "$spec"
"$venv/bin/schemathesis" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection \
  --header "X-API-Key: fuzz-key" \
  --header "Authorization: Bearer fuzz-key" \
  --max-time "${SCHEMATHESIS_SECS:-150}" \
  --request-timeout 10 \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --no-color

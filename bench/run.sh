#!/usr/bin/env bash
# Reproduces the README's performance table with one command.
#
#   bash bench/run.sh                  # chat profile + openai profile + open-loop, release build
#   bash bench/run.sh --hold 1000      # also memory per 1,000 open streams (--hold 1000,10000: both)
#
# It drives the team's shared harness (HARNESS, default ../shared/bench: a mock OpenAI upstream,
# oha and sse-load), which measures agent-api against the direct upstream in the same run, and
# adds an open-loop run at a fixed rate (oha -q) against both. Auth, rate limiting (raised so
# that one client IP is not refused), validation and ownership stay on: a key is configured
# and sent with every request.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${HARNESS:-$root/../shared/bench}"
[ -f "$HARNESS/run.sh" ] || { echo "bench: the shared harness is not at $HARNESS (set HARNESS)" >&2; exit 2; }
command -v oha >/dev/null || { echo "bench: needs oha: cargo install oha --version 1.16.0 --locked" >&2; exit 2; }
PORT="${PORT:-18000}"
RATE="${RATE:-5000}"
HOLD=""
while [ $# -gt 0 ]; do
  case "$1" in
    --hold) HOLD="$2"; shift ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

cargo build --release --locked --manifest-path "$root/Cargo.toml"
bin="$root/target/release/agent-api"
KEY=bench-key
server_env="HOST=127.0.0.1 PORT=$PORT API_KEYS=bench=$KEY RATE_LIMIT_PER_MINUTE=1000000000 RATE_LIMIT_BURST=1000000000 MAX_IN_FLIGHT=100000 RUST_LOG=warn"
cmd="$server_env exec $bin"
target="http://127.0.0.1:$PORT"

echo "## chat profile (/chat, /chat/stream, /health)"
bash "$HARNESS/run.sh" --target "$target" --label agent-api --server-cmd "$cmd" -H "X-API-Key: $KEY"
echo
echo "## openai profile (/v1/chat/completions)"
bash "$HARNESS/run.sh" --profile openai --target "$target" --label agent-api --server-cmd "$cmd" -H "Authorization: Bearer $KEY"

if [ -n "$HOLD" ]; then
  for k in ${HOLD//,/ }; do
    echo
    echo "## memory with $k open streams through /chat/stream (openai provider: each also holds an upstream connection)"
    bash "$HARNESS/run.sh" --target "$target" --label agent-api --server-cmd "ulimit -n 65536 2>/dev/null; $cmd" \
      -H "X-API-Key: $KEY" --scenarios none --hold "$k"
    echo
    echo "## memory with $k open streams, echo provider (the server's own share: no upstream connection)"
    # '[slow]' makes the echo provider hold its first token for a minute, so the stream stays open.
    bash "$HARNESS/run.sh" --target "$target" --label agent-api \
      --server-cmd "ulimit -n 65536 2>/dev/null; LLM_PROVIDER=echo $cmd" \
      -H "X-API-Key: $KEY" --stream-body '{"message":"[slow] hold"}' --scenarios none --hold "$k"
  done
fi

echo
echo "## memory with 1000 open WebSockets (bench/ws_hold.py; needs python's websockets package)"
PY="${BENCH_PYTHON:-python3}"
if "$PY" -c "import websockets" 2>/dev/null; then
  env $server_env PORT=$((PORT + 1)) ECHO_DELAY_MS=0 "$bin" > /dev/null 2>&1 &
  ws_server=$!
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$((PORT + 1))/health" >/dev/null && break; sleep 0.1; done
  "$PY" "$root/bench/ws_hold.py" --url "ws://127.0.0.1:$((PORT + 1))" --pid "$ws_server" --count 1000 --key "$KEY" || true
  kill "$ws_server" 2>/dev/null || true
else
  echo "skipped: pip install websockets (or set BENCH_PYTHON to a python that has it)"
fi

echo
echo "## open loop: $RATE requests/s for 10 s, POST /chat vs the mock directly"
mock_bin="${MOCK_BIN:-$HOME/.cache/agent-api-bench/mock-openai/release/mock-openai}"
[ -x "$mock_bin" ] || cargo build --release --quiet --manifest-path "$HARNESS/mock-openai/Cargo.toml" \
  --target-dir "$HOME/.cache/agent-api-bench/mock-openai"
if curl -sf http://127.0.0.1:18081/health > /dev/null; then
  echo "bench: port 18081 is taken; stop what listens there" >&2; exit 1
fi
"$mock_bin" --port 18081 > /dev/null &
mock=$!
env $server_env OPENAI_BASE_URL=http://127.0.0.1:18081/v1 OPENAI_API_KEY=dummy "$bin" > /dev/null 2>&1 &
server=$!
trap 'kill $server $mock 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "$target/health" >/dev/null && break; sleep 0.1; done
body='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello, how are you?"}]}'
run_oha() { oha --no-tui --output-format json -z 10s -q "$RATE" -c 256 -m POST -H 'content-type: application/json' "$@"; }
p() { python3 -c 'import json,sys; d=json.load(sys.stdin); l=d["latencyPercentiles"]; s=d["summary"]; print("%s rps=%.0f p50=%.3fms p99=%.3fms success=%.4f" % (sys.argv[1], s["requestsPerSec"], l["p50"]*1000, l["p99"]*1000, s["successRate"]))' "$1"; }
run_oha -d "$body" http://127.0.0.1:18081/v1/chat/completions | p "direct   "
run_oha -d '{"message":"Hello, how are you?"}' -H "X-API-Key: $KEY" "$target/chat" | p "agent-api /chat"
run_oha -d "$body" -H "Authorization: Bearer $KEY" "$target/v1/chat/completions" | p "agent-api /v1"

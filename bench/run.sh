#!/usr/bin/env bash
# Reproduces the README's performance table with one command.
#
#   bash bench/run.sh                  # chat profile + openai profile + open-loop, release build
#   bash bench/run.sh --hold 1000      # also memory per 1,000 open streams (--hold 1000,10000: both)
#   bash bench/run.sh --open-loop      # only the open-loop part (ROUNDS of 10 s at RATE requests/s: 5, 5000)
#   bash bench/run.sh --clients        # only the upstream-client comparison: ours and hyper-util's,
#                                      # scenarios 1 and 3 over HTTP and HTTPS (bench/tls-front), and
#                                      # memory per stream at 10,000 held streams
#   bash bench/run.sh --responses      # only /v1/responses beside /v1/chat/completions (scenarios 1, 3)
#   bash bench/run.sh --agent          # only the agent scenario: a turn with one HTTP tool call
#                                      # (bench/agent-mock: upstream and tool), the server's own
#                                      # time per step beyond the two model calls and the tool call
#
# It drives the team's shared harness (HARNESS, default ../shared/bench: a mock OpenAI upstream,
# oha and sse-load), which measures agent-api against the direct upstream in the same run, and
# adds an open-loop run at a fixed rate (oha -q) against both. Auth, rate limiting (raised so
# that one client IP is not refused), validation and ownership stay on: a key is configured
# and sent with every request. The per-key quotas on streams and conversations are raised to the
# whole server's, since every request of the bench carries the one key.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${HARNESS:-$root/../shared/bench}"
[ -f "$HARNESS/run.sh" ] || { echo "bench: the shared harness is not at $HARNESS (set HARNESS)" >&2; exit 2; }
command -v oha >/dev/null || { echo "bench: needs oha: cargo install oha --version 1.16.0 --locked" >&2; exit 2; }
PORT="${PORT:-18000}"
RATE="${RATE:-5000}"
ROUNDS="${ROUNDS:-5}"
HOLD=""
ONLY_OPEN_LOOP=""
CLIENTS=""
AGENT=""
RESPONSES=""
while [ $# -gt 0 ]; do
  case "$1" in
    --hold) HOLD="$2"; shift ;;
    --open-loop) ONLY_OPEN_LOOP=1 ;;
    --clients) CLIENTS=1 ;;
    --agent) AGENT=1 ;;
    --responses) RESPONSES=1 ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

cargo build --release --locked --manifest-path "$root/Cargo.toml"
bin="$root/target/release/agent-api"
KEY=bench-key
server_env="HOST=127.0.0.1 PORT=$PORT API_KEYS=bench=$KEY RATE_LIMIT_PER_MINUTE=1000000000 RATE_LIMIT_BURST=1000000000 MAX_IN_FLIGHT=100000 MAX_STREAMS_PER_KEY=100000 MAX_CONVERSATIONS_PER_KEY=10000 RUST_LOG=warn"
cmd="$server_env exec $bin"
target="http://127.0.0.1:$PORT"

if [ -n "$CLIENTS" ]; then
  # The upstream client, measured both ways in one run (issue 19). HTTPS goes through a TLS
  # front of our own (ALPN h2 and http/1.1) before the mock: the same front for both clients.
  front_dir="$HOME/.cache/agent-api-bench/tls-front"
  cargo build --release --quiet --manifest-path "$root/bench/tls-front/Cargo.toml" --target-dir "$front_dir"
  front="$front_dir/release/tls-front"
  cert="$(mktemp)"
  trap 'pkill -f "$front" 2>/dev/null || true' EXIT
  for client in own hyper; do
    echo "## UPSTREAM_HTTP_CLIENT=$client, plain HTTP upstream: scenarios 1 and 3"
    bash "$HARNESS/run.sh" --target "$target" --label "agent-api ($client)" \
      --server-cmd "UPSTREAM_HTTP_CLIENT=$client $cmd" -H "X-API-Key: $KEY" --scenarios 1,3
    echo
    echo "## UPSTREAM_HTTP_CLIENT=$client, HTTPS upstream (bench/tls-front): scenarios 1 and 3"
    https_cmd="$front 18443 \$MOCK_URL $cert > /dev/null & sleep 0.5; OPENAI_BASE_URL=https://localhost:18443/v1 SSL_CERT_FILE=$cert UPSTREAM_HTTP_CLIENT=$client $cmd"
    bash "$HARNESS/run.sh" --target "$target" --label "agent-api ($client, https)" \
      --server-cmd "$https_cmd" -H "X-API-Key: $KEY" --scenarios 1,3
    pkill -f "$front" 2>/dev/null || true
    echo
    echo "## UPSTREAM_HTTP_CLIENT=$client: memory with 10000 open streams through /chat/stream"
    bash "$HARNESS/run.sh" --target "$target" --label "agent-api ($client)" \
      --server-cmd "ulimit -n 65536 2>/dev/null; UPSTREAM_HTTP_CLIENT=$client $cmd" \
      -H "X-API-Key: $KEY" --scenarios none --hold 10000
    echo
    # FRONT_MAX_STREAMS: HTTP/2 streams the front allows per connection (hyper's default, 200).
    echo "## UPSTREAM_HTTP_CLIENT=$client, HTTPS: memory with 10000 open streams (front: ${FRONT_MAX_STREAMS:-200} streams a connection)"
    hold_cmd="ulimit -n 65536 2>/dev/null; FRONT_MAX_STREAMS=${FRONT_MAX_STREAMS:-200} $front 18443 \$MOCK_URL $cert > /dev/null & sleep 0.5; OPENAI_BASE_URL=https://localhost:18443/v1 SSL_CERT_FILE=$cert UPSTREAM_HTTP_CLIENT=$client $cmd"
    bash "$HARNESS/run.sh" --target "$target" --label "agent-api ($client, https)" \
      --server-cmd "$hold_cmd" -H "X-API-Key: $KEY" --scenarios none --hold 10000
    pkill -f "$front" 2>/dev/null || true
    echo
  done
  exit 0
fi

if [ -n "$AGENT" ]; then
  # One tool call per turn: model call 1 answers with lookup_order, the tool answers, model call
  # 2 answers with text. Direct: the same three requests, each sent alone to the mock; the
  # server's added time per step = (turn p50 - the three direct p50s) / 2 model calls. oha at
  # one connection (latency), ROUNDS rounds of 10 s alternating order; then 64 connections.
  amock_dir="$HOME/.cache/agent-api-bench/agent-mock"
  cargo build --release --quiet --manifest-path "$root/bench/agent-mock/Cargo.toml" --target-dir "$amock_dir"
  mp=18091
  "$amock_dir/release/agent-mock" $mp > /dev/null &
  amock=$!
  work="$(mktemp -d)"
  cat > "$work/agents.toml" <<TOML
[agents.bench]
tools = ["lookup_order"]
[tools.lookup_order]
description = "Look up an order by its id"
url = "http://127.0.0.1:$mp/tool"
parameters = { type = "object", properties = { order_id = { type = "string" } }, required = ["order_id"] }
TOML
  env $server_env AGENTS_FILE="$work/agents.toml" OPENAI_BASE_URL="http://127.0.0.1:$mp/v1" OPENAI_API_KEY=dummy "$bin" > /dev/null 2>&1 &
  server=$!
  trap 'kill $server $amock 2>/dev/null || true; rm -rf "$work"' EXIT
  for _ in $(seq 50); do curl -sf "$target/health" >/dev/null && break; sleep 0.1; done
  tools='[{"type":"function","function":{"name":"lookup_order","description":"Look up an order by its id","parameters":{"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}}}]'
  msgs='{"role":"system","content":"You are a helpful AI assistant."},{"role":"user","content":"where is order 42?"}'
  step1="{\"model\":\"gpt-4o-mini\",\"messages\":[$msgs],\"temperature\":0.7,\"max_tokens\":1000,\"tools\":$tools}"
  step2="{\"model\":\"gpt-4o-mini\",\"messages\":[$msgs,{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"lookup_order\",\"arguments\":\"{\\\"order_id\\\": \\\"42\\\"}\"}}]},{\"role\":\"tool\",\"content\":\"order 42: shipped\",\"tool_call_id\":\"call_1\"}],\"temperature\":0.7,\"max_tokens\":1000,\"tools\":$tools}"
  plain="{\"model\":\"gpt-4o-mini\",\"messages\":[$msgs],\"temperature\":0.7,\"max_tokens\":1000}"
  out="$(mktemp -d)"
  o() { oha --no-tui --output-format json -z "$1" -c "$2" -m POST -H 'content-type: application/json' "${@:3}"; }
  overhead() { curl -s "$target/metrics" | awk '/^agent_api_gateway_overhead_seconds_(sum|count)\{method="POST",route="\/chat"\}/ {print $2}' | paste -sd' '; }
  agent() { o "$1" "$2" -d '{"message":"where is order 42?","agent":"bench"}' -H "X-API-Key: $KEY" "$target/chat"; }
  chat() { o "$1" "$2" -d '{"message":"where is order 42?"}' -H "X-API-Key: $KEY" "$target/chat"; }
  s1() { o "$1" "$2" -d "$step1" "http://127.0.0.1:$mp/v1/chat/completions"; }
  s2() { o "$1" "$2" -d "$step2" "http://127.0.0.1:$mp/v1/chat/completions"; }
  tool() { o "$1" "$2" -d '{"order_id":"42"}' "http://127.0.0.1:$mp/tool"; }
  single() { o "$1" "$2" -d "$plain" "http://127.0.0.1:$mp/v1/chat/completions"; }
  agent 2s 1 > /dev/null; chat 1s 1 > /dev/null
  for r in $(seq "$ROUNDS"); do
    order="agent chat s1 tool s2 single"; [ $((r % 2)) = 0 ] && order="single s2 tool s1 chat agent"
    for k in $order; do
      [ "$k" = agent ] && overhead > "$out/ov.before.$r"
      "$k" 10s 1 > "$out/$k.$r.json"
      [ "$k" = agent ] && overhead > "$out/ov.after.$r"
    done
  done
  agent 10s 64 > "$out/agent.c64.json"; chat 10s 64 > "$out/chat.c64.json"
  python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def p50(k, r): return json.load(open(f"{out}/{k}.{r}.json"))["latencyPercentiles"]["p50"] * 1e3
def ok(k, r): return json.load(open(f"{out}/{k}.{r}.json"))["summary"]["successRate"]
print("| round | agent turn p50 ms | direct: call 1 + tool + call 2 p50 ms | added per step ms | plain /chat p50 | direct call p50 | added ms | agent overhead metric, mean per turn ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
per_step, plain_added, metric = [], [], []
for r in range(1, rounds + 1):
    a, direct = p50("agent", r), p50("s1", r) + p50("tool", r) + p50("s2", r)
    c, d = p50("chat", r), p50("single", r)
    b = [float(x) for x in open(f"{out}/ov.before.{r}").read().split()]
    e = [float(x) for x in open(f"{out}/ov.after.{r}").read().split()]
    m = (e[0] - b[0]) / max(e[1] - b[1], 1) * 1e3
    per_step.append((a - direct) / 2); plain_added.append(c - d); metric.append(m)
    bad = [k for k in ("agent", "chat", "s1", "tool", "s2", "single") if ok(k, r) < 1]
    print(f"| {r} | {a:.3f} | {direct:.3f} | {per_step[-1]:+.3f} | {c:.3f} | {d:.3f} | {plain_added[-1]:+.3f} | {m:.3f} |" + (f" errors: {bad}" if bad else ""))
print(f"| median | | | {statistics.median(per_step):+.3f} | | | {statistics.median(plain_added):+.3f} | {statistics.median(metric):.3f} |")
for k in ("agent", "chat"):
    s = json.load(open(f"{out}/{k}.c64.json"))["summary"]
    print(f"c64 {k}: {s['requestsPerSec']:.0f} rps, success {s['successRate']:.4f}")
PY
  rm -rf "$out"
  exit 0
fi

# /v1/responses beside /v1/chat/completions, in one run: the same mock answers both (the server
# translates a Responses request to Chat Completions upstream), so the two ratios compare.
responses_rows() {
  echo "## openai profile (/v1/chat/completions): scenarios 1 and 3"
  bash "$HARNESS/run.sh" --profile openai --target "$target" --label "agent-api /v1/chat/completions" \
    --server-cmd "$cmd" -H "Authorization: Bearer $KEY" --scenarios 1,3
  echo
  echo "## /v1/responses (store: false, as /v1/chat/completions keeps nothing): scenarios 1 and 3"
  bash "$HARNESS/run.sh" --profile openai --target "$target" --label "agent-api /v1/responses" \
    --server-cmd "$cmd" -H "Authorization: Bearer $KEY" --scenarios 1,3 \
    --chat-path /v1/responses --chat-body '{"model":"gpt-4o-mini","input":"Hello, how are you?","store":false}' \
    --stream-path /v1/responses --stream-body '{"model":"gpt-4o-mini","input":"Hello, how are you?","store":false,"stream":true}'
}

if [ -n "$RESPONSES" ]; then
  responses_rows
  exit 0
fi

if [ -z "$ONLY_OPEN_LOOP" ]; then
  echo "## chat profile (/chat, /chat/stream, /health)"
  bash "$HARNESS/run.sh" --target "$target" --label agent-api --server-cmd "$cmd" -H "X-API-Key: $KEY"
  echo
  echo "## openai profile (/v1/chat/completions)"
  bash "$HARNESS/run.sh" --profile openai --target "$target" --label agent-api --server-cmd "$cmd" -H "Authorization: Bearer $KEY"
  echo
  responses_rows

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

  fi

  echo
  echo "## open loop: $RATE requests/s, $ROUNDS rounds of 10 s each against the mock directly, POST /chat and /v1"
  echo "(rounds alternate the order; 'added' is the server's percentile minus the direct one of the same round)"
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
out="$(mktemp -d)"
body='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello, how are you?"}]}'
run_oha() { oha --no-tui --output-format json -z "$1" -q "$RATE" -c 256 -m POST -H 'content-type: application/json' "${@:2}"; }
direct() { run_oha "$1" -d "$body" http://127.0.0.1:18081/v1/chat/completions; }
chat() { run_oha "$1" -d '{"message":"Hello, how are you?"}' -H "X-API-Key: $KEY" "$target/chat"; }
v1() { run_oha "$1" -d "$body" -H "Authorization: Bearer $KEY" "$target/v1/chat/completions"; }
# Warm-up (not counted): connections, the upstream pool, and a full conversation store.
chat 3s > /dev/null; v1 2s > /dev/null
for r in $(seq "$ROUNDS"); do
  order="direct chat v1"; [ $((r % 2)) = 0 ] && order="v1 chat direct"
  for k in $order; do "$k" 10s > "$out/$k.$r.json"; done
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(k, r):
    d = json.load(open(f"{out}/{k}.{r}.json"))
    l, s = d["latencyPercentiles"], d["summary"]
    return {"rps": s["requestsPerSec"], "ok": s["successRate"], "p50": l["p50"] * 1e3, "p99": l["p99"] * 1e3}
print("| round | direct p50 / p99 ms | /chat p50 / p99 | /v1 p50 / p99 | added p99 /chat | added p99 /v1 |")
print("| --- | --- | --- | --- | --- | --- |")
added = {"chat": [], "v1": []}
for r in range(1, rounds + 1):
    d, c, v = load("direct", r), load("chat", r), load("v1", r)
    for k, x in (("chat", c), ("v1", v)):
        added[k].append(x["p99"] - d["p99"])
        if x["ok"] < 1 or x["rps"] < 0.99 * d["rps"]:
            print(f"round {r}: {k} fell short: {x['rps']:.0f} rps, success {x['ok']:.4f}")
    print(f"| {r} | {d['p50']:.2f} / {d['p99']:.2f} | {c['p50']:.2f} / {c['p99']:.2f} | {v['p50']:.2f} / {v['p99']:.2f} "
          f"| {added['chat'][-1]:+.2f} | {added['v1'][-1]:+.2f} |")
print(f"| median | | | | {statistics.median(added['chat']):+.2f} | {statistics.median(added['v1']):+.2f} |")
PY
rm -rf "$out"

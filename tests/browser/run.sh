#!/usr/bin/env bash
# Browser tests of the chat page: Debian's chromium driven by playwright-core.
# Installs chromium (apt) and the node packages (npm ci) when they are missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if ! command -v chromium >/dev/null 2>&1; then
  echo "browser tests: installing chromium (apt)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d "$here/node_modules/playwright-core" ]; then
  echo "browser tests: installing node packages (npm ci)"
  (cd "$here" && npm ci --no-audit --no-fund --silent)
fi

cargo build --locked --quiet --manifest-path "$root/Cargo.toml"
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
export AGENT_API_BIN="$target_dir/debug/agent-api"
export CHROMIUM="$(command -v chromium)"
cd "$here"
node --test --test-reporter=spec

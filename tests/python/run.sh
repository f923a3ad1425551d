#!/usr/bin/env bash
# The official OpenAI Python SDK (pinned in requirements.txt) against the server's /v1 routes.
# Makes a virtualenv in target/ on first use.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$root/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
venv="$target_dir/python-venv"
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  echo "python tests: installing the pinned OpenAI SDK into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi
cargo build --locked --quiet --manifest-path "$root/Cargo.toml"
export AGENT_API_BIN="$target_dir/debug/agent-api"
cd "$here"
"$venv/bin/python" -m pytest -q -p no:cacheprovider test_openai_sdk.py test_responses.py

#!/usr/bin/env bash
# Installs the published MCP servers the agent tests talk to (pinned), once, into
# MCP_TOOLS_DIR (default target/mcp-tools):
#  - mcp-server-time from PyPI (stdio), in a virtualenv;
#  - @modelcontextprotocol/server-everything from npm (run over Streamable HTTP).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dir="${MCP_TOOLS_DIR:-$root/target/mcp-tools}"
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$dir/venv/.requirements"; then
  echo "mcp tests: installing mcp-server-time (PyPI) into $dir/venv"
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$dir/venv/.requirements"
fi
if [ ! -f "$dir/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js" ] \
  || ! cmp -s "$here/package.json" "$dir/node/package.json"; then
  echo "mcp tests: installing @modelcontextprotocol/server-everything (npm) into $dir/node"
  mkdir -p "$dir/node"
  cp "$here/package.json" "$dir/node/package.json"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund)
fi

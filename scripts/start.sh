#!/usr/bin/env bash
# Sets everything up, then starts Knowledge Agent on the embedded defaults: the embedded
# PostgreSQL cluster, pgvector verification and migrations, the health checklist, then the HTTP
# API in the foreground (Ctrl-C stops it). Extra arguments go to `serve`, e.g. --port 9090.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./build/release/knowledge-agent migrate up
./build/release/knowledge-agent doctor
exec ./build/release/knowledge-agent serve "$@"

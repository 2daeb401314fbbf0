#!/usr/bin/env bash
# Sets everything up, then starts Knowledge Agent on the embedded defaults: the embedded
# PostgreSQL cluster, pgvector verification and migrations, then the health checklist.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./build/release/knowledge-agent migrate up
./build/release/knowledge-agent doctor

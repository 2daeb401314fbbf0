#!/usr/bin/env bash
# Stops every PostgreSQL cluster under the test directory, then removes it. Used by CTest's
# cleanup fixture so a test run leaves nothing running, whatever happened in between.
set -u
dir=${1:?test directory}
[ -d "$dir" ] || exit 0
while IFS= read -r version_file; do
  data=$(dirname "$version_file")
  [ -f "$data/postmaster.pid" ] || continue
  pid=$(head -n 1 "$data/postmaster.pid")
  kill -INT "$pid" 2>/dev/null  # fast shutdown
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
done < <(find "$dir" -maxdepth 4 -name PG_VERSION -path '*/PG_VERSION' 2>/dev/null)
rm -rf "$dir"

#!/usr/bin/env bash
# Sets up the machine and runs the whole test suite twice: a warnings-as-errors build, then an
# AddressSanitizer + UndefinedBehaviorSanitizer build. Each run starts its own throwaway
# PostgreSQL clusters and stops them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
KA_SETUP_SKIP_BUILD=1 ./scripts/setup.sh

echo "== clang-format"
git ls-files '*.cpp' '*.h' | xargs clang-format --dry-run --Werror

jobs=$(nproc)
run_suite() {
  local dir=$1; shift
  cmake -S . -B "$dir" -DBUILD_TESTING=ON -DKA_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j"$jobs"
  (cd "$dir" && ctest -j"$jobs" --output-on-failure --timeout 600)
}

echo "== tests (warnings as errors)"
run_suite build/ci -DCMAKE_BUILD_TYPE=RelWithDebInfo
echo "== tests under AddressSanitizer + UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  run_suite build/asan -DCMAKE_BUILD_TYPE=Debug -DKA_SANITIZE=ON

# libFuzzer targets (fuzz/), each for a bounded time from a copy of its checked-in seed corpus
# (the repository's corpus is never modified). A crash, leak, sanitizer report or broken
# invariant fails the run; the reproducer is kept under build/fuzz/artifacts/.
echo "== fuzzing (${KA_FUZZ_SECONDS:=20} s per target)"
cmake -S . -B build/fuzz -DCMAKE_CXX_COMPILER=clang++-19 -DKA_FUZZ=ON -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/fuzz -j"$jobs" --target ka_fuzzers
mkdir -p build/fuzz/artifacts
for corpus in fuzz/corpus/*/; do
  target=$(basename "$corpus")
  work=$(mktemp -d)
  cp -R "$corpus." "$work/"
  log=build/fuzz/artifacts/"$target".log
  status=0
  build/fuzz/fuzz/"fuzz_$target" "$work" -max_total_time="$KA_FUZZ_SECONDS" -rss_limit_mb=2048 \
    -timeout=30 -print_final_stats=1 -artifact_prefix=build/fuzz/artifacts/"$target"- \
    >"$log" 2>&1 || status=$?
  rm -rf "$work"
  echo "fuzz_$target: $(grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" |
    tr '\n' ' ')"
  if [ "$status" -ne 0 ]; then
    tail -n 80 "$log"
    echo "fuzz_$target failed (exit $status); reproducer in build/fuzz/artifacts/" >&2
    exit 1
  fi
done

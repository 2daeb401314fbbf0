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

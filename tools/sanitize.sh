#!/usr/bin/env bash
# Builds the compiled core with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy
# of the tree and runs the test suite against it. Python itself is not instrumented, so the
# ASan runtime must be preloaded; leak detection is off because the interpreter "leaks" by design.
#
#   tools/sanitize.sh [pytest args...]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$src" ls-files -z --cached --others --exclude-standard | (cd "$src" && xargs -0 cp --parents -t "$work")
cd "$work"
ORDEREDTASK_SANITIZE=1 python3 setup.py -q build_ext --inplace >build.log 2>&1 || { tail -30 build.log; exit 1; }
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
python3 -c 'import orderedtask; assert orderedtask.IMPLEMENTATION == "c"; print("sanitized core loaded")'
python3 -m pytest -q -p no:cacheprovider "${@:-tests}"

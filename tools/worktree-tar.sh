#!/usr/bin/env bash
# Writes the working tree to stdout as a tar: the files git tracks plus the untracked ones it does
# not ignore (what a fresh clone with your edits would hold), so no build/, egg-info, in-place
# extension or virtual environment comes along. Outside a git checkout: everything but those.
#   bash tools/worktree-tar.sh | tar -C "$dest" -xf -
set -euo pipefail
cd "$(dirname "$0")/.."
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  # --ignore-failed-read: a tracked file deleted in the working tree is left out.
  git ls-files -z --cached --others --exclude-standard |
    tar --null -T - --ignore-failed-read -cf -
else
  tar --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude='*.so' \
    --exclude='./.venv*' -cf - .
fi

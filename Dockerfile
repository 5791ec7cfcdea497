# syntax=docker/dockerfile:1
# One image for both roles: the HTTP gateway (default command, `editgan serve`) and the GPU worker
# (`editgan worker`, set by docker-compose.yml and deploy/k8s/worker.yaml).
#
#   docker build -t editgan:0.1.0 .                        # bakes models/ into /app/models
#   docker build -t editgan-unbaked:0.1.0 --build-arg BAKE_MODELS=0 .   # models mounted at run time instead
#
# Base: NVIDIA's CUDA runtime image for the CUDA of the torch wheel (torch 2.14.1 cu130, so CUDA 13.0).
# torch loads the CUDA libraries its wheel brings (nvidia-* wheels), not the base's copies; the base is chosen
# for what the NVIDIA container toolkit reads from it: NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES
# (compute, utility) and NVIDIA_REQUIRE_CUDA, which makes a host driver too old for CUDA 13 fail at container
# start instead of at the first kernel. The same image runs on CPU-only hosts. To drop the unused ~2 GB of
# CUDA libraries, build with --build-arg BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04 (same toolkit env).
# Ubuntu 24.04 ships Python 3.12, so uv installs a standalone CPython 3.11 (python-build-standalone).
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
# 1: copy the repository's models/ (the shipped demo bundle) into /app/models; 0: leave it empty for a mount.
ARG BAKE_MODELS=1

FROM ghcr.io/astral-sh/uv:0.11.7 AS uv

# ---- build: Python, dependencies and the project into /opt/venv (the only things the runtime copies) ----
FROM ${BASE_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN uv python install 3.11 && uv venv --python 3.11 /opt/venv

# Dependencies before the source, so that editing the code rebuilds only the last layer.
# torch first, from PyTorch's CUDA 13.0 index, with the Makefile's pins (a test keeps them equal).
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python --index-url https://download.pytorch.org/whl/cu130 \
        torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python -r pyproject.toml
COPY engine engine
COPY schemas schemas
COPY workers workers
COPY service service
COPY client client
# A regular (not editable) install: the image holds no source tree, only the installed packages.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --python /opt/venv/bin/python --no-deps .

# ---- runtime: no compiler, no uv, no apt packages (the health check is Python, the CUDA libs are wheels) ----
# EDITGAN_COMPILE (torch.compile) needs a C/C++ compiler, so a process started with it here refuses to start
# and says so; an image derived from this one with `apt-get install -y g++` runs it.
FROM ${BASE_IMAGE} AS runtime
# A fixed numeric id, so that Kubernetes' runAsNonRoot can verify it (Ubuntu's own user takes 1000).
RUN groupadd --gid 10001 editgan && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin editgan
COPY --from=build /opt/python /opt/python
COPY --from=build /opt/venv /opt/venv
# glibc malloc settings of the Makefile (a test keeps them equal): without them CPU timings swing 2-25x and
# 512 px edits fragment the heap up to an OOM kill.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MALLOC_MMAP_THRESHOLD_=268435456 \
    MALLOC_TRIM_THRESHOLD_=68719476736 \
    MALLOC_TOP_PAD_=1073741824 \
    EDITGAN_HOST=0.0.0.0 \
    EDITGAN_MODELS_DIR=/app/models

FROM runtime AS models-0
RUN mkdir -p /app/models

FROM runtime AS models-1
COPY models/ /app/models/

# ---- final: the models stage picked by BAKE_MODELS (BuildKit builds only that one) ----
# hadolint ignore=DL3006
FROM models-${BAKE_MODELS}
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# `editgan healthcheck` GETs /healthz on 127.0.0.1:$EDITGAN_PORT with urllib (no curl in the image). The
# worker overrides it with `editgan healthcheck --worker` (docker-compose.yml); Kubernetes uses its own probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["editgan", "healthcheck"]
CMD ["editgan", "serve"]

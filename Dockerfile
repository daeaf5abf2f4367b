# syntax=docker/dockerfile:1
# The CPU image: one image for every service, chosen by its command.
#   docker build -t task-manager .
#   docker run task-manager                                   # the API (python -m services.api)
#   docker run task-manager python -m services.fetcher        # any stage, likewise
#   docker run task-manager task-manager models download RealESRGAN_x4plus
# The GPU upscaler has its own image (Dockerfile.cuda). deploy/README.md shows compose and Kubernetes.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
# The same torch pin as ./task-manager; CPU wheels from PyTorch's own index, so pip never pulls the
# multi-GB CUDA build that PyPI's torch depends on.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
# A regular (not editable) install: the image needs no source tree, only /opt/venv.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[otel]" && python -c "import torch, services.api.app, services.upscaler.worker"

FROM python:${PYTHON_VERSION}-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TM_API_HOST=0.0.0.0 \
    TM_API_PORT=8000 \
    TM_METRICS_HOST=0.0.0.0 \
    TM_METRICS_PORT=9464 \
    TM_MODEL_DIR=/models
# An unprivileged user; /models exists and is theirs, so a named volume mounted there is writable.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home app \
    && install -d -o app -g app /models
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/app
EXPOSE 8000 9464
# The API's health (503 while NATS is unreachable). Stage services run from the same image and
# override it (compose: their own healthcheck; Kubernetes ignores HEALTHCHECK and uses probes).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/health' % os.environ.get('TM_API_PORT', '8000'), timeout=4)"]
# Exec form: the service is PID 1 and receives SIGTERM itself (it drains; see shared/runtime/stage.py).
CMD ["python", "-m", "services.api"]

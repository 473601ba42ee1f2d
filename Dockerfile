# syntax=docker/dockerfile:1
# Two images from one file (README, "Container and cluster"):
#   docker build -t playstore-mlops:0.8.0 .                              # the model service (default)
#   docker build --target pipeline -t playstore-mlops-pipeline:0.8.0 .   # `python runner.py`
# Both install requirements.txt into /opt/venv and the project (package `lib`) NOT editable, so
# lib is read from site-packages and the project directory /app holds only runner.py,
# pipeline.yaml and notebooks/ (what lib.settings.project_root needs). No secret is baked in:
# tokens, the store URL and the MLflow credentials come from the environment at run time.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (their layer survives a change to lib/): requirements.txt without its
# `-e .` line, which names the project itself and is installed below, not editable.
COPY requirements.txt ./
RUN sed '/^-e /d' requirements.txt > /tmp/requirements-deps.txt \
    && pip install --no-cache-dir -r /tmp/requirements-deps.txt
# The project (pyproject.toml names README.md as its readme; lib/ ships its templates).
COPY pyproject.toml README.md ./
COPY lib/ lib/
# -I: the installed package is imported, not ./lib
RUN pip install --no-cache-dir --no-deps . \
    && python -I -c "import lib.serving.app, lib.pipeline.orchestrator"

FROM ${PYTHON_IMAGE} AS runtime
# A fixed, unprivileged user: the Kubernetes manifests (deploy/) run as this UID (runAsUser).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
# caches and kernels' runtime files go to /tmp: the service's root filesystem is read-only
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    JUPYTER_RUNTIME_DIR=/tmp/jupyter-runtime \
    IPYTHONDIR=/tmp/ipython
WORKDIR /app
COPY runner.py pipeline.yaml ./
COPY notebooks/ notebooks/

# `python runner.py` (pipeline, operator commands): writes .runner.lock, models/, reports/ and
# logs/ into the project directory, so /app belongs to the app user here (deploy/ mounts a
# volume on models/, reports/ and logs/ to keep them between runs).
FROM runtime AS pipeline
RUN mkdir -p models reports logs data && chown -R app:app /app
USER 10001:10001
CMD ["python", "runner.py"]

# The model service (the default target): one uvicorn process per container; replicas are
# containers (deploy/model-deployment.yaml). The app binds 127.0.0.1 by default: a container
# must bind 0.0.0.0 to be reachable, hence --host. It writes nothing under /app (the store
# and its journal are elsewhere: PIPELINE_STORE_URL, SERVING_JOURNAL_DIR).
FROM runtime AS service
USER 10001:10001
EXPOSE 8080
# Ready = a champion is loaded: /health answers 200 either way, so the check reads its
# `ready` field (Kubernetes ignores HEALTHCHECK: deploy/ has the same check as readinessProbe).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import json,sys,urllib.request; sys.exit(0 if json.load(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=3)).get('ready') is True else 1)"]
CMD ["python", "runner.py", "serve", "--host", "0.0.0.0", "--port", "8080"]

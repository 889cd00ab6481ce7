# syntax=docker/dockerfile:1
# The project image: the pipeline, the MLflow and Prefect servers, the retraining service and
# distributed-tuning workers all run from it (see docker-compose.yml).
#   docker build -t cifar10-mlops:cpu .
#   docker build -t cifar10-mlops:gpu --build-arg LOCK_FILE=requirements-gpu.lock .
# The base is pinned to an exact Python release; pin its digest too where builds must be
# bit-for-bit repeatable (docker buildx imagetools inspect python:3.11.11-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PATH=/opt/venv/bin:$PATH

# git: DVC and the runs' git_commit tags; tini: signals reach the Python process (pid 1).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git tini \
 && rm -rf /var/lib/apt/lists/*

# requirements.lock (CPU TensorFlow) or requirements-gpu.lock (CUDA TensorFlow); only the
# lock files are copied first, so a code change does not reinstall the dependencies.
ARG LOCK_FILE=requirements.lock
COPY requirements.lock requirements-gpu.lock /tmp/
RUN python -m venv /opt/venv && pip install -r /tmp/${LOCK_FILE}

RUN useradd --create-home --uid 1000 app
WORKDIR /app
COPY --chown=app:app . .
# The folders named volumes mount over are created here, owned by `app`, so that the volumes
# start out writable by it.
RUN pip install --no-deps --no-build-isolation -e . \
 && mkdir -p data models/tuner mlartifacts .dvc/cache \
 && chown -R app:app /app
USER app
# git (hence DVC) refuses a repository owned by another user: the image may be run under
# another uid (`user:` in compose) than the one that owns /app.
RUN git config --global --add safe.directory /app

ENTRYPOINT ["tini", "--"]
CMD ["make", "help"]

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
 && mkdir -p data models/tuner .dvc/cache \
 && chown -R app:app /app
USER app
# git (hence DVC) refuses a repository owned by another user: the image may be run under
# another uid (`user:` in compose) than the one that owns /app. The image has no git remote:
# it holds no credentials to push experiments, so a retrain in it keeps its experiment in the
# container and pushes its outputs to the DVC remote (`dvc push`); the registered version's
# `pipeline/` artifacts and the remote restore it anywhere (`cifar10-mlops checkout --remote`).
# A retrain records a DVC experiment, a git commit: under this name unless the environment
# gives another (GIT_AUTHOR_NAME, GIT_COMMITTER_EMAIL, ...).
RUN git config --global --add safe.directory /app \
 && git config --global user.name "cifar10-mlops retrainer" \
 && git config --global user.email "retrainer@cifar10-mlops.invalid" \
 && git init --quiet  # a default .git/config: the checkout's own never enters the image

ENTRYPOINT ["tini", "--"]
CMD ["make", "help"]

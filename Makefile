# Quick start: `make repro` runs the whole pipeline, `make test` runs the test suite.
# Both bootstrap .venv from requirements.lock on first use; only Python 3.11+ and make are assumed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# requirements-gpu.lock installs the CUDA build of TensorFlow instead
LOCK_FILE ?= requirements.lock
# dvc.yaml's stage commands call `python`: make it the one in .venv.
export PATH := $(abspath $(BIN)):$(PATH)

.DEFAULT_GOAL := help
.PHONY: help venv repro smoke study tune-study tune-full test test-extended test-slow remote-local push pull lock mlflow-ui flow services \
  services-stop services-status mlflow-server prefect-server deployment deploy-pool worker serve-model drift drift-deployment \
  search-pool tune-worker stack-env stack-check compose-check bench airbench airbench-muon plots screenshots publish-data notify-webhook reference-pages \
  results docs docs-serve

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): $(LOCK_FILE) pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "error: Python 3.11+ is required ($(PYTHON) is $$($(PYTHON) -V 2>&1))" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r $(LOCK_FILE)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(STAMP)  ## create .venv from requirements.lock (LOCK_FILE=requirements-gpu.lock for GPUs)

# Each run of a recipe below leaves a record of what it measured in reports/runs/ (commit,
# params digest, hardware, stage times, test metrics): `make results` renders docs/results.md
# and README's results block from them.
RECORD = $(BIN)/python -m cifar10_mlops.ops.runs

repro: $(STAMP)  ## run the whole pipeline (dvc repro) with params.yaml; records it in reports/runs/
	$(RECORD) repro -- $(BIN)/dvc repro

smoke: $(STAMP)  ## the pipeline on a few hundred images, 1 epoch, in a scratch copy
	$(BIN)/python -m cifar10_mlops.ops.smoke

# What the study's notebook did in every run: Keras' ImageDataGenerator warp (rotation 15°,
# shift 0.1, shear 0.2, zoom 0.2, flip), Adam, plain cross-entropy, no flip averaging.
STUDY_TRAINING := -S train.architecture=baseline -S train.dropout=0.0 -S train.batch_size=64 \
  -S train.optimizer=adam -S train.learning_rate=0.001 -S train.lr_schedule=step \
  -S train.weight_decay=0.0 -S train.label_smoothing=0.0 -S train.tta_level=0 \
  -S train.momentum=0.9 -S train.lookahead=false -S train.conv_3_filters=null \
  -S train.augment.alternating_flip=false \
  -S train.augment.rotation=15.0 -S train.augment.shift=0.1 -S train.augment.shear=0.2 \
  -S train.augment.zoom=0.2 -S train.augment.crop=0 -S train.augment.horizontal_flip=true

# The study's first phase (§3.3, §4.2): baseline CNN, batch 64, 30 epochs, Adam 1e-3 divided
# by 10 after epoch 10, no early stopping, no tuning. Runs as a DVC experiment in a temporary copy.
STUDY := $(STUDY_TRAINING) -S tune.enabled=false -S train.conv_1_filters=32 \
  -S train.conv_2_filters=64 -S train.dense_units=64 -S train.epochs=30 \
  -S train.lr_drop_every=10 -S train.lr_drop_factor=0.1 -S train.lr_min=0.0001 \
  -S train.early_stopping_patience=null

study: $(STAMP)  ## the study's exact first-phase recipe as a DVC experiment (see `dvc exp show`)
	$(RECORD) study -- $(BIN)/dvc exp run --temp -n study-phase1 $(STUDY)

# The study's search and final training (§4.4-4.5): Hyperband over the study's space with
# max_epochs 10, factor 3 and 2 iterations (60 trials, 240 epochs) on the whole training split,
# patience 3 and no cost cap; then 15 epochs at the best values, constant learning rate,
# patience 3. Baseline network, batch 64. About 1.5 h of search on a 2-core CPU.
STUDY_TUNE := $(STUDY_TRAINING) -S tune.enabled=true -S tune.max_epochs=10 -S tune.factor=3 \
  -S tune.hyperband_iterations=2 -S tune.early_stopping_patience=3 -S tune.train_per_class=null \
  -S tune.max_mflops=null -S tune.first_trial_from_train=false \
  -S 'tune.space.conv_1_filters={min:32,max:64,step:16}' \
  -S 'tune.space.conv_2_filters={min:64,max:128,step:32}' \
  -S 'tune.space.dense_units={min:64,max:128,step:32}' \
  -S 'tune.space.learning_rate={min:0.0001,max:0.001,sampling:log}' \
  -S 'tune.space.optimizer={values:[adam,sgd]}' -S tune.space.conv_3_filters=null \
  -S tune.space.weight_decay=null -S tune.space.label_smoothing=null \
  -S tune.space.muon_learning_rate=null \
  -S train.epochs=15 -S train.lr_drop_every=15 -S train.early_stopping_patience=3 \
  -S train.use_tuned=true

tune-study: $(STAMP)  ## the study's exact Hyperband search + final training as a DVC experiment
	$(RECORD) tune-study -- $(BIN)/dvc exp run --temp -n study-tuning $(STUDY_TUNE)

# The budget at which the search can correct a mis-set value (docs/decisions.md: search
# recovery): 2,000 images per class, Hyperband max_epochs 4, factor 4 (7 trials, 15 epochs).
# About 13 minutes of `tune` stage on a 2-core CPU (measured 785 s), against 2.5 for the default.
TUNE_FULL := -S tune.train_per_class=2000 -S tune.max_epochs=4 -S tune.factor=4

tune-full: $(STAMP)  ## the pipeline with the search at the budget that can rank, as a DVC experiment
	$(RECORD) tune-full -- $(BIN)/dvc exp run --temp -n tune-full $(TUNE_FULL)

# airbench94 (KellerJordan/cifar10-airbench, legacy/airbench94.py) exactly: 64/256/256 filters,
# batch 1024, 10 epochs of its schedule, optimizer and tricks (benchmarks/bench.py AIRBENCH94
# holds the same values; a test checks). 19.4 min of training on a 2-core CPU, seconds on
# a GPU. No search: the recipe is the tuned one.
AIRBENCH := -S tune.enabled=false -S train.architecture=fast -S train.conv_1_filters=64 \
  -S train.conv_2_filters=256 -S train.conv_3_filters=256 -S train.batch_size=1024 \
  -S train.epochs=10 -S train.optimizer=airbench -S train.learning_rate=11.5 \
  -S train.momentum=0.85 -S train.weight_decay=0.0153 -S train.bias_lr_scale=64.0 \
  -S train.lr_schedule=triangle -S train.warmup_epochs=2.3 -S train.lr_start=0.2 \
  -S train.lr_end=0.07 -S train.label_smoothing=0.2 -S train.dirac_init=true \
  -S train.whiten_bias_epochs=3 -S train.lookahead=true -S train.tta_level=2 \
  -S train.head=airbench94 -S train.dropout=0.0 -S train.early_stopping_patience=null

# airbench94_muon (the same repository's airbench94_muon.py): Muon on the conv filters, batch
# 2000, 8 epochs of a linear decay, no lookahead, a unit-std classifier (bench.py AIRBENCH94_MUON
# holds the same values; a test checks). Its learning_rate and bias_lr_scale are the classifier's
# 0.67 and the biases' 0.053 in this project's units (x 1024 x (2 - momentum)/(1 - momentum)).
AIRBENCH_MUON := -S tune.enabled=false -S train.architecture=fast -S train.conv_1_filters=64 \
  -S train.conv_2_filters=256 -S train.conv_3_filters=256 -S train.batch_size=2000 \
  -S train.epochs=8 -S train.optimizer=muon -S train.learning_rate=5260.0 \
  -S train.muon_learning_rate=0.24 -S train.muon_momentum=0.6 -S train.momentum=0.85 \
  -S train.weight_decay=0.0157 -S train.bias_lr_scale=0.0791 -S train.lr_schedule=triangle \
  -S train.warmup_epochs=0.0 -S train.lr_start=1.0 -S train.lr_end=0.0 \
  -S train.label_smoothing=0.2 -S train.dirac_init=true -S train.whiten_bias_epochs=3 \
  -S train.lookahead=false -S train.tta_level=2 -S train.head=airbench94_muon \
  -S train.dropout=0.0 -S train.early_stopping_patience=null

airbench: $(STAMP)  ## airbench94's reference recipe as a DVC experiment (see `dvc exp show`)
	$(RECORD) airbench -- $(BIN)/dvc exp run --temp -n airbench94 $(AIRBENCH)

airbench-muon: $(STAMP)  ## airbench94_muon's recipe (Muon optimizer) as a DVC experiment
	$(RECORD) airbench-muon -- $(BIN)/dvc exp run --temp -n airbench94-muon $(AIRBENCH_MUON)

bench: $(STAMP)  ## training speed vs the study's pipeline (benchmarks/bench.py; needs `make repro` first)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Most tests wait on subprocesses and servers, so more workers than cores pays
# (docs/development.md has the measurements).
TEST_WORKERS ?= 4
test: $(STAMP)  ## the offline test suite (tiny synthetic data), TEST_WORKERS in parallel
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --maxschedchunk 1 --durations=15

# What `make test` leaves out to stay within 8 minutes: the tests of a minute or more (servers
# killed mid-run, workers dying mid-search, whole pipeline runs, retrains and rebuilds). CI runs
# it after `make test`.
test-extended: $(STAMP)  ## the tests of a minute or more (fault injection, whole pipelines), in parallel
	$(BIN)/python -m pytest -m extended -n $(TEST_WORKERS) --maxschedchunk 1

test-slow: $(STAMP)  ## tests that need the full dataset or minutes of training
	$(BIN)/python -m pytest -m slow

# The DVC remote: this clone's default, unless DVC_REMOTE names another (`s3`: endpoint and keys
# from AWS_*; docs/pipeline.md). Without a default, `remote-local` sets one: a
# folder beside the clone, shared by the clones next to it. Absolute, in .dvc/config.local: DVC
# resolves a relative local remote against the wrong folder in `dvc exp push` and `fetch -a`
# (treeverse/dvc#10054).
DVC_REMOTE ?=
LOCAL_REMOTE ?= $(abspath ..)/cifar10-mlops-dvc-remote
REMOTE_ARG = $(if $(DVC_REMOTE),--remote $(DVC_REMOTE))
ENSURE_REMOTE = [ -n "$(DVC_REMOTE)" ] || $(BIN)/dvc remote default >/dev/null 2>&1 \
  || $(MAKE) --no-print-directory remote-local

remote-local: $(STAMP)  ## make LOCAL_REMOTE (../cifar10-mlops-dvc-remote) this clone's default DVC remote
	$(BIN)/dvc remote add --local --force --default local "$(LOCAL_REMOTE)"

push: $(STAMP)  ## dvc push data, models, images and the run-cache (DVC_REMOTE=s3 for the team's)
	@$(ENSURE_REMOTE)
	$(BIN)/dvc push --run-cache $(REMOTE_ARG)

pull: $(STAMP)  ## dvc pull what dvc.lock names, and the run-cache, from the remote (DVC_REMOTE)
	@$(ENSURE_REMOTE)
	$(BIN)/dvc pull --run-cache $(REMOTE_ARG)

# The embedded store's URI and the champion alias have one home, cifar10_mlops.core.tracking.
STORE_URI ?= $$($(BIN)/python -c 'from cifar10_mlops.core import tracking; \
  print(tracking.DEFAULT_TRACKING_URI)')

# Ports, overridable (`make mlflow-ui MLFLOW_PORT=5050`): the names scripts/services.sh and
# docker-compose.yml read for the same servers.
MLFLOW_PORT ?= 5000
mlflow-ui: $(STAMP)  ## open the MLflow UI on the embedded store at http://127.0.0.1:5000 (MLFLOW_PORT)
	$(BIN)/mlflow ui --backend-store-uri "$(STORE_URI)" --host 127.0.0.1 --port $(MLFLOW_PORT)

# `dvc plots show` offline: DVC's page with Vega, Vega-Lite and vega-embed inlined (npm
# tarballs pinned by sha512 in the module), set as plots.html_template in .dvc/config.local.
# Order-only on $(STAMP): a new lock file does not download it again.
PLOTS_TEMPLATE := .dvc/plots/offline.html

$(PLOTS_TEMPLATE): src/cifar10_mlops/ops/plots_template.py | $(STAMP)
	$(BIN)/python -m cifar10_mlops.ops.plots_template --out $@

plots: $(STAMP) $(PLOTS_TEMPLATE)  ## dvc plots show, with the Vega scripts inlined (renders offline)
	$(BIN)/dvc plots show --html-template $(PLOTS_TEMPLATE)

# After `make repro`: the pages a user opens, shot with headless Chromium (Debian's chromium).
screenshots: $(STAMP) $(PLOTS_TEMPLATE)  ## the MLflow UI's and dvc plots' pages as PNGs in screenshots/
	$(BIN)/dvc plots show --html-template $(PLOTS_TEMPLATE) --out dvc_plots >/dev/null
	$(BIN)/python -m cifar10_mlops.ops.screenshots --out screenshots

# Prefect: flows/retrain.py runs the stages as tasks; flows/deploy.py serves it on a schedule.
# The local Prefect server keeps its database in .prefect/ of this checkout.
export PREFECT_HOME ?= $(abspath .prefect)
FLOW_ARGS ?=

# `make flow` reports to the local Prefect server when it runs (with its auth string), else to
# a temporary one.
flow: $(STAMP)  ## the pipeline as a Prefect flow run (FLOW_ARGS="--force --epochs 1")
	@$(ENSURE_REMOTE)
	if [ -z "$$PREFECT_API_URL" ] && scripts/services.sh running prefect; then \
	  export PREFECT_API_URL=http://127.0.0.1:$${PREFECT_PORT:-4200}/api; \
	  export PREFECT_API_AUTH_STRING="$$(cat .services/prefect.auth)"; fi; \
	$(BIN)/python -m flows.retrain $(FLOW_ARGS)

services: $(STAMP)  ## start the MLflow server, the Prefect server and the retraining deployment
	@$(ENSURE_REMOTE)
	scripts/services.sh start mlflow prefect deployment

services-stop:  ## stop what `make services` started
	scripts/services.sh stop deployment prefect mlflow

services-status:  ## which local services run
	scripts/services.sh status

mlflow-server: $(STAMP)  ## start only the MLflow server (UI + API) on 127.0.0.1:5000
	scripts/services.sh start mlflow

prefect-server: $(STAMP)  ## start only the Prefect server (UI + API) on 127.0.0.1:4200
	scripts/services.sh start prefect

deployment: $(STAMP)  ## serve the scheduled retraining deployment (needs the Prefect server)
	@$(ENSURE_REMOTE)
	scripts/services.sh start deployment

# Prefect's production path: the deployment on a process work pool, run by workers, each in
# its own checkout (docs/scale-out.md).
POOL ?= cpu
POOL_TYPE ?= process
deploy-pool: $(STAMP)  ## deploy the scheduled retraining to the Prefect work pool POOL (cpu) of POOL_TYPE (process)
	$(BIN)/python -m flows.deploy --pool $(POOL) --type $(POOL_TYPE)

worker: $(STAMP)  ## a Prefect worker of POOL (cpu): retrains and trials in this checkout (POOL_TYPE=docker: in containers)
	$(BIN)/python -m flows.worker --pool $(POOL) --type $(POOL_TYPE)

# A new version of the dataset: verified, tracked and pushed with DVC, committed, and announced
# to the Prefect server, whose deployment trigger retrains on it (docs/orchestration.md).
ARCHIVE ?=
publish-data: $(STAMP)  ## publish ARCHIVE as the dataset and announce it (retrains on it)
	@[ -n "$(ARCHIVE)" ] || { echo "usage: make publish-data ARCHIVE=path/to/cifar10.tar.gz" >&2; exit 2; }
	$(BIN)/cifar10-mlops publish-data "$(ARCHIVE)"

WEBHOOK_URL ?=
notify-webhook: $(STAMP)  ## save the webhook that retrain failures and new champions go to (WEBHOOK_URL)
	@[ -n "$(WEBHOOK_URL)" ] || { echo "usage: make notify-webhook WEBHOOK_URL=https://..." >&2; exit 2; }
	$(BIN)/python -m cifar10_mlops.ops.notify --url "$(WEBHOOK_URL)"

# The model name has one home, params.yaml `register.model_name`.
MODEL_URI ?= $$($(BIN)/python -c 'from cifar10_mlops.core import settings, tracking; \
  print(tracking.champion_uri(settings.load_params().register.model_name))')
# MLflow's scoring app with request limits (docs/limits.md), not `mlflow models serve`.
SERVE_PORT ?= 5001
# How often the server asks which version the alias names, to serve it (0: never).
SERVE_RELOAD_SECONDS ?= 30
# Where the server keeps the newest images it classifies, which `make drift` tests
# (params.yaml monitor.sample_dir; docs/monitoring.md).
SAMPLE_DIR ?= $$($(BIN)/python -c 'from cifar10_mlops.core import settings; \
  print(settings.load_params().monitor.sample_dir)')
serve-model: $(STAMP)  ## serve MODEL_URI (default: the champion) at http://127.0.0.1:5001/invocations (SERVE_PORT)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE_URI)} \
	  $(BIN)/cifar10-mlops serve --model "$(MODEL_URI)" --host 127.0.0.1 --port $(SERVE_PORT) \
	  --reload-seconds $(SERVE_RELOAD_SECONDS) --sample-dir "$(SAMPLE_DIR)"

drift: $(STAMP)  ## test what the served model was asked against its reference (exit 3: drift)
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE_URI)} \
	  $(BIN)/cifar10-mlops drift --model "$(MODEL_URI)" --sample-dir "$(SAMPLE_DIR)"

# The hourly drift test as a Prefect deployment (params.yaml monitor); a drift emits the event
# cifar10.drift.detected, which retrains when monitor.retrain_on_drift is true.
drift-deployment: $(STAMP)  ## serve the scheduled drift test (needs the Prefect server)
	if [ -z "$$PREFECT_API_URL" ] && scripts/services.sh running prefect; then \
	  export PREFECT_API_URL=http://127.0.0.1:$${PREFECT_PORT:-4200}/api; \
	  export PREFECT_API_AUTH_STRING="$$(cat .services/prefect.auth)"; fi; \
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-$(STORE_URI)} $(BIN)/python -m flows.drift --serve

# Hyperband with each trial a flow run on the work pool POOL, PARALLEL at once: `make worker
# POOL=...` on each machine runs them (docs/scale-out.md); the outputs are the tune stage's.
PARALLEL ?= 2
search-pool: $(STAMP)  ## Hyperband with its trials as flow runs on the work pool POOL (PARALLEL at once)
	$(BIN)/python -m flows.search --pool $(POOL) --parallel $(PARALLEL)

# Keras Tuner's distributed mode: `KERASTUNER_TUNER_ID=chief dvc repro tune` serves the search,
# each worker runs trials (KERASTUNER_ORACLE_IP/PORT reach the chief; the --state folder and the
# MLflow server are shared). See docs/scale-out.md.
tune-worker: $(STAMP)  ## a worker for a distributed search (KERASTUNER_* set, see docs/scale-out.md)
	KERASTUNER_TUNER_ID=$${KERASTUNER_TUNER_ID:-worker-$$(hostname)-$$$$} \
	  $(BIN)/python -m cifar10_mlops.stages.tune --worker --data data/prepared --state models/tuner

stack-env:  ## write .env for docker compose from .env.example, with random passwords
	$(PYTHON) scripts/stack_env.py

# The stack for real with podman: images built (base stand-ins from Debian's packages where
# registries are unreachable), every service healthy, one retrain through the worker, logins
# and storage checked, torn down (scripts/stack-check.sh; minutes, not part of `make test`).
stack-check: $(STAMP)  ## build and start the compose stack with podman, retrain once, check, tear down
	scripts/stack-check.sh

compose-check:  ## validate docker-compose.yml and .env with Docker Compose (no engine needed)
	@if docker compose version >/dev/null 2>&1; then docker compose config --quiet; \
	  else docker-compose config --quiet; fi && echo "docker-compose.yml: valid"

UV_COMPILE := uv pip compile pyproject.toml --extra dev --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --no-header

reference-pages: $(STAMP)  ## regenerate docs/settings.md and docs/modules.md from the code
	$(BIN)/python -m cifar10_mlops.ops.reference_pages

results: $(STAMP)  ## render README's results block and docs/results.md from reports/runs/
	$(BIN)/python -m cifar10_mlops.ops.results

# The docs site (mkdocs.yml): built strict, so a broken link or a page missing from the nav
# fails; served on 127.0.0.1 only. DOCS_PORT for another port.
DOCS_PORT ?= 8000
export NO_MKDOCS_2_WARNING := 1
docs: $(STAMP)  ## build the docs site into site/ (strict; open site/index.html)
	$(BIN)/mkdocs build --strict --quiet

docs-serve: $(STAMP)  ## serve the docs site at http://127.0.0.1:8000 (DOCS_PORT), rebuilt on edit
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:$(DOCS_PORT)

lock:  ## re-resolve requirements.lock (CPU) and requirements-gpu.lock from pyproject.toml (needs uv)
	$(UV_COMPILE) --extra cpu -o requirements.lock
	$(UV_COMPILE) --extra gpu -o requirements-gpu.lock

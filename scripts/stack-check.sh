#!/usr/bin/env bash
# `make stack-check`: the compose stack started for real, with podman, on this machine, then one
# retrain through its work-pool worker on a tiny dataset, checked, and torn down.
#
# 1. Images. Public registries may be unreachable, so the base images are local stand-ins built
#    from Debian's packages (docker/stand-ins/): a debootstrapped bookworm, Python 3.11 on it
#    (for the Dockerfile's PYTHON_IMAGE), PostgreSQL and an S3 server (moto, for minio) that
#    honour the contract docker-compose.yml relies on. The project image is built from the real
#    Dockerfile, from a clean clone of HEAD. STACK_CHECK_IMAGES=official skips the stand-ins and
#    uses the images docker-compose.yml names (where registries answer).
# 2. The stack: docker-compose.yml plus docker/stand-ins/compose.override.yml (image names
#    only), a .env from scripts/stack_env.py (random passwords), free ports. podman without
#    systemd runs no health checks by itself, so this script runs them (`podman healthcheck
#    run`) and starts each service once those it depends on are healthy, in the order
#    docker-compose.yml declares.
# 3. Checks: every service healthy; a retrain through the worker (tiny data: 20 images per
#    class, no search, 1 epoch) completes; the model is registered as champion in MLflow; its
#    artifacts and the DVC outputs are objects in the S3 store; MLflow and Prefect answer 401
#    without their login; then the model server serves that champion and Prometheus (built
#    from Debian's package) scrapes a prediction from it, with the alert rules loaded; then
#    the drift-monitor's deployment tests 128 noise images the server was sent: drift, with
#    its Prefect artifact and event, its MLflow run, and cifar10_drift_detected 1 at the
#    server and in Prometheus. The docker pool: podman's Docker API (`podman system service`)
#    for the docker-worker, which runs two retrains of retrain/<name>-docker at once, each in
#    a fresh container of the project's image with only /datasets mounted (read-only) and the
#    MLflow login `runner`; both complete, their register stages in turn, and the containers
#    are removed; a run that asks for its own volumes is refused by the server, and a run of
#    the deployment edited to run a shell step first is refused by the worker.
# 4. Teardown: `down -v`, and no container, volume or network of the check is left.
# podman runs with runc and cgroupfs (crun fails on this host's hybrid cgroups) and rlimits
# containers may raise (containers.conf below). Needs root, podman, runc, netavark,
# aardvark-dns and debootstrap (apt-get install podman runc uidmap netavark aardvark-dns
# debootstrap); podman-compose is installed, pinned, in a venv of its own.
set -euo pipefail

ROOT=$(pwd)
WORK=${STACK_CHECK_DIR:-$ROOT/.stack-check}
PROJECT=cifar10check
PODMAN_COMPOSE=podman-compose==1.6.0
STANDIN=localhost/cifar10-standin
START=$(date +%s)
log() { printf '[stack-check %4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
die() { echo "error: $*" >&2; exit 1; }

for tool in podman debootstrap; do
  command -v "$tool" >/dev/null ||
    die "$tool is not installed (apt-get install podman runc uidmap netavark aardvark-dns iptables debootstrap)"
done
mkdir -p "$WORK"
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
if [[ ! -x $WORK/tools/bin/podman-compose ]]; then
  python3 -m venv "$WORK/tools" && "$WORK/tools/bin/pip" install -q "$PODMAN_COMPOSE"
fi

# --- 1. images ---------------------------------------------------------------------------
if [[ ${STACK_CHECK_IMAGES:-standin} == standin ]]; then
  if ! podman image exists "$STANDIN/debian:bookworm"; then
    log "debootstrap bookworm (minbase) -> $STANDIN/debian:bookworm"
    rm -rf "$WORK/rootfs"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian \
      >"$WORK/debootstrap.log" 2>&1 || die "debootstrap failed; see $WORK/debootstrap.log"
    tar -C "$WORK/rootfs" -c . | podman import - "$STANDIN/debian:bookworm" >/dev/null
    rm -rf "$WORK/rootfs"
  fi
  # the build context: the stand-ins' files and this machine's own certificate authorities
  rm -rf "$WORK/context" && cp -r docker/stand-ins "$WORK/context" && mkdir "$WORK/context/local-ca"
  cp /usr/local/share/ca-certificates/*.crt "$WORK/context/local-ca/" 2>/dev/null || true
  for name in python postgres; do
    log "build $STANDIN/$name:bookworm"
    podman build -q --network host -t "$STANDIN/$name:bookworm" \
      -f "$WORK/context/$name.Containerfile" "$WORK/context" >/dev/null
  done
  BASE=(--build-arg "PYTHON_IMAGE=$STANDIN/python:bookworm")
  DEBIAN_BASE=(--build-arg "DEBIAN_IMAGE=$STANDIN/debian:bookworm")
  OVERRIDE=(-f docker/stand-ins/compose.override.yml)
else
  BASE=() OVERRIDE=() DEBIAN_BASE=()
fi
log "clone HEAD and build cifar10-mlops:cpu from its Dockerfile"
rm -rf "$WORK/src"
git clone -q "$ROOT" "$WORK/src"
podman build -q --network host "${BASE[@]}" -t cifar10-mlops:cpu "$WORK/src" \
  >"$WORK/build.log" 2>&1 || die "podman build failed; see $WORK/build.log"
if [[ ${#OVERRIDE[@]} -gt 0 ]]; then
  log "build $STANDIN/minio:bookworm"
  podman build -q -t "$STANDIN/minio:bookworm" -f docker/stand-ins/minio.Containerfile \
    docker/stand-ins >/dev/null
  cp docker/stand-ins/compose.override.yml "$WORK/src/docker/stand-ins/"
fi

# --- 2. the stack --------------------------------------------------------------------------
cd "$WORK/src"
compose() { "$WORK/tools/bin/podman-compose" -p "$PROJECT" -f docker-compose.yml "${OVERRIDE[@]}" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MLFLOW_PORT=$(free_port) PREFECT_PORT=$(free_port) MINIO_PORT=$(free_port)
MODEL_PORT=$(free_port) PROMETHEUS_PORT=$(free_port)
python3 scripts/stack_env.py >/dev/null
mkdir -p "$WORK/datasets"
"$ROOT/.venv/bin/python" - "$WORK/datasets/cifar10-tiny.tar.gz" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from conftest import write_image_archive  # the tests' synthetic CIFAR-10 layout

write_image_archive(Path(sys.argv[1]), train_per_class=20, test_per_class=10, fmt="PNG")
EOF
sed -i -e "s|^MLFLOW_PORT=.*|MLFLOW_PORT=$MLFLOW_PORT|" -e "s|^PREFECT_PORT=.*|PREFECT_PORT=$PREFECT_PORT|" \
  -e "s|^MINIO_PORT=.*|MINIO_PORT=$MINIO_PORT|" -e "s|^DATASET_DIR=.*|DATASET_DIR=$WORK/datasets|" \
  -e "s|^MODEL_PORT=.*|MODEL_PORT=$MODEL_PORT|" -e "s|^PROMETHEUS_PORT=.*|PROMETHEUS_PORT=$PROMETHEUS_PORT|" \
  -e "s|^CIFAR10_SOURCE=.*|CIFAR10_SOURCE=/datasets/cifar10-tiny.tar.gz|" \
  -e "s|^MODEL_SAMPLE_SECONDS=.*|MODEL_SAMPLE_SECONDS=2|" -e "s|^COMPOSE_PROFILES=.*|COMPOSE_PROFILES=cpu,docker-pool|" \
  -e "s|^CONTAINER_SOCKET=.*|CONTAINER_SOCKET=$WORK/podman.sock|" .env
set -a; . ./.env; set +a

PODMAN_SERVICE=
teardown() {
  log "teardown: down -v"
  compose down -v >"$WORK/down.log" 2>&1 || true
  [[ -z $PODMAN_SERVICE ]] || kill "$PODMAN_SERVICE" 2>/dev/null || true
  left=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
  [[ -z $left ]] || { podman rm -f $left >/dev/null; echo "error: containers were left" >&2; }
}
trap teardown EXIT

container() { podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" \
  --filter "label=com.docker.compose.service=$1" | head -1; }
healthy() {  # run the service's health check until it passes (or fail after $2 s)
  local id deadline=$(($(date +%s) + $2))
  id=$(container "$1")
  until podman healthcheck run "$id" >/dev/null 2>&1; do
    [[ $(date +%s) -lt $deadline ]] || { podman logs --tail 30 "$id" >&2; die "$1 not healthy in $2 s"; }
    sleep 3
  done
  log "$1 healthy"
}

log "up: postgres, minio"
compose up -d --no-deps postgres minio >"$WORK/up.log" 2>&1
healthy postgres 120
healthy minio 120
compose up -d --no-deps buckets >>"$WORK/up.log" 2>&1
status=$(podman wait "$(container buckets)")
[[ $status == 0 ]] || { podman logs "$(container buckets)" >&2; die "buckets exited $status"; }
log "buckets created: $(podman logs "$(container buckets)" | tr '\n' ' ')"
log "up: mlflow, prefect"
compose up -d --no-deps mlflow prefect >>"$WORK/up.log" 2>&1
healthy mlflow 300
healthy prefect 300
log "up: retrainer (deploys to the pool cpu, then is its worker)"
compose up -d --no-deps retrainer >>"$WORK/up.log" 2>&1
healthy retrainer 300

# --- 3. checks ---------------------------------------------------------------------------
log "retrain through the worker (tiny data, no search, 1 epoch)"
# (CIFAR10_SOURCE in .env names the tiny archive; with no CIFAR10_CHECKSUM its digest is
# recorded, not checked: a run's parameters may not change download.*)
params='{"force": true, "set_params": ["tune.enabled=false", "train.epochs=1",
  "prepare.train_per_class=20", "prepare.test_per_class=10"]}'
podman exec "$(container retrainer)" prefect deployment run retrain/retrain-weekly \
  --params "$params" --watch --watch-timeout 900 >"$WORK/run.log" 2>&1 ||
  { tail -40 "$WORK/run.log" >&2; podman logs --tail 60 "$(container retrainer)" >&2; die "the retrain failed"; }
grep -q "Flow run finished successfully in 'Completed'" "$WORK/run.log" || die "the retrain did not complete"
log "retrain completed"

MLFLOW_PORT=$MLFLOW_PORT PREFECT_PORT=$PREFECT_PORT MINIO_PORT=$MINIO_PORT \
  "$ROOT/.venv/bin/python" - <<'EOF'
import base64
import json
import os
import urllib.error
import urllib.request

import boto3


def status(url, auth=None, body=None):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = None if body is None else json.dumps(body).encode()  # {} is a POST too
    request = urllib.request.Request(url, data, headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


mlflow = f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}"
prefect = f"http://127.0.0.1:{os.environ['PREFECT_PORT']}/api"
admin = f"admin:{os.environ['MLFLOW_ADMIN_PASSWORD']}"
alias = f"{mlflow}/api/2.0/mlflow/registered-models/alias?name=cifar10-cnn&alias=champion"
assert status(alias)[0] == 401, "MLflow answered without a login"
code, found = status(alias, admin)
assert code == 200, code
version = found["model_version"]
print(f"MLflow: cifar10-cnn v{version['version']} is champion (run {version['run_id']}); 401 without login")
assert status(f"{prefect}/flows/filter", body={})[0] == 401, "Prefect answered without its auth"
code, runs = status(f"{prefect}/flow_runs/filter", os.environ["PREFECT_AUTH_STRING"], {})
assert code == 200, code
states = sorted(r["state_type"] for r in runs if r["state_type"] != "SCHEDULED")
assert states == ["COMPLETED"], states
print(f"Prefect: flow runs {states}; 401 without the auth string")
s3 = boto3.client(
    "s3", endpoint_url=f"http://127.0.0.1:{os.environ['MINIO_PORT']}", region_name="us-east-1",
    aws_access_key_id=os.environ["MINIO_ROOT_USER"],
    aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
)
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="cifar10-mlops")
        for o in page.get("Contents", [])]
models = [k for k in keys if k.startswith("mlflow/") and k.endswith("model.keras")]
dvc = [k for k in keys if k.startswith("dvc/files/md5/")]
assert models and dvc, keys[:20]
print(f"S3: {len(keys)} objects in cifar10-mlops ({len(models)} model.keras under mlflow/, "
      f"{len(dvc)} DVC objects under dvc/)")
EOF
# --- the docker pool: two retrains at once, each in a fresh container --------------------
log "podman's Docker API on $WORK/podman.sock, for the docker-pool worker"
rm -f "$WORK/podman.sock"
podman system service --time=0 "unix://$WORK/podman.sock" >"$WORK/podman-service.log" 2>&1 &
PODMAN_SERVICE=$!
for _ in $(seq 30); do [[ -S $WORK/podman.sock ]] && break; sleep 1; done
[[ -S $WORK/podman.sock ]] || die "podman system service made no socket; see $WORK/podman-service.log"
log "up: mlflow-runner (the runs' MLflow login), docker-worker"
compose up -d --no-deps mlflow-runner >>"$WORK/up.log" 2>&1
status=$(podman wait "$(container mlflow-runner)")
[[ $status == 0 ]] || { podman logs "$(container mlflow-runner)" >&2; die "mlflow-runner exited $status"; }
log "mlflow-runner: $(podman logs "$(container mlflow-runner)" 2>/dev/null | grep '^MLflow user' | tr '\n' ' ')"
compose up -d --no-deps docker-worker >>"$WORK/up.log" 2>&1
healthy docker-worker 300
log "two retrains on the docker pool at once"
MLFLOW_PORT=$MLFLOW_PORT PREFECT_PORT=$PREFECT_PORT MINIO_PORT=$MINIO_PORT \
  "$ROOT/.venv/bin/python" - "$WORK/docker-pool.json" <<'EOF'
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import boto3


def call(url, auth=None, body=None, method=None):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


prefect, auth = f"http://127.0.0.1:{os.environ['PREFECT_PORT']}/api", os.environ["PREFECT_AUTH_STRING"]
mlflow, admin = f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}", f"admin:{os.environ['MLFLOW_ADMIN_PASSWORD']}"
s3 = boto3.client(
    "s3", endpoint_url=f"http://127.0.0.1:{os.environ['MINIO_PORT']}", region_name="us-east-1",
    aws_access_key_id=os.environ["MINIO_ROOT_USER"],
    aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"],
)


def models_in_s3():
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="cifar10-mlops", Prefix="mlflow/")
    return sum(o["Key"].endswith("model.keras") for p in pages for o in p.get("Contents", []))


def versions():
    query = urllib.parse.urlencode({"filter": "name='cifar10-cnn'", "max_results": 100})
    found = call(f"{mlflow}/api/2.0/mlflow/model-versions/search?{query}", admin)
    return {v["version"]: v for v in found.get("model_versions", [])}


before_models, before_versions = models_in_s3(), versions()
[deployment] = call(f"{prefect}/deployments/filter", auth,
                    {"deployments": {"name": {"like_": "-docker"}}})
pool = call(f"{prefect}/work_pools/{deployment['work_pool_name']}", auth)
assert pool["type"] == "docker", pool["type"]
params = {"force": True, "set_params": ["tune.enabled=false", "train.epochs=1",
          "prepare.train_per_class=20", "prepare.test_per_class=10"]}
# a run may not choose its volumes (nor image, command, env, networks): the server refuses it
try:
    call(f"{prefect}/deployments/{deployment['id']}/create_flow_run", auth,
         {"parameters": params, "job_variables": {"volumes": ["/:/host"]}})
    raise AssertionError("a flow run with job variable volumes was accepted")
except urllib.error.HTTPError as exc:
    assert exc.code == 422, exc.code
runs = [call(f"{prefect}/deployments/{deployment['id']}/create_flow_run", auth,
             {"parameters": params})["id"] for _ in range(2)]
seen, overlap, deadline = {}, False, time.monotonic() + 1200
while time.monotonic() < deadline:
    live = json.loads(subprocess.run(
        ["podman", "ps", "--format", "json", "--filter", "label=io.prefect.flow-run-id"],
        capture_output=True, text=True, check=True).stdout or "[]")
    running = [c for c in live if c["Labels"].get("io.prefect.flow-run-id") in runs]
    overlap |= len(running) == 2
    for c in running:
        run = c["Labels"]["io.prefect.flow-run-id"]
        if run not in seen:
            [info] = json.loads(subprocess.run(["podman", "inspect", c["Id"]], capture_output=True,
                                               text=True, check=True).stdout)
            seen[run] = info
    states = [call(f"{prefect}/flow_runs/{r}", auth)["state"]["type"] for r in runs]
    if all(s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states):
        break
    time.sleep(2)
assert states == ["COMPLETED", "COMPLETED"], states
assert set(seen) == set(runs), f"a run's container was never seen: {sorted(seen)}"
assert overlap, "the two runs never ran at the same time"
ids = {seen[r]["Id"] for r in runs}
assert len(ids) == 2, ids
image = {seen[r]["ImageName"] for r in runs}
for run, info in seen.items():
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["MLFLOW_TRACKING_USERNAME"] == "runner", env.get("MLFLOW_TRACKING_USERNAME")
    assert os.environ["MLFLOW_ADMIN_PASSWORD"] not in info["Config"]["Env"].__str__()
    assert not any(k.startswith(("POSTGRES", "MINIO_ROOT", "DOCKER")) for k in env), sorted(env)
    mounts = [(m["Destination"], m["RW"]) for m in info["Mounts"]]
    assert mounts == [("/datasets", False)], mounts  # no work tree but the container's own
deadline = time.monotonic() + 120  # a run is COMPLETED a moment before its container exits
while time.monotonic() < deadline:
    left = subprocess.run(["podman", "ps", "-aq", "--filter", "label=io.prefect.flow-run-id"],
                          capture_output=True, text=True, check=True).stdout.split()
    if not left:
        break
    time.sleep(2)
assert not left, f"flow-run containers left: {left}"
# the register stages took turns (the global concurrency limit cifar10-register)
tasks = call(f"{prefect}/task_runs/filter", auth, {
    "flow_runs": {"id": {"any_": runs}}, "task_runs": {"name": {"any_": ["register"]}}})
spans = sorted((t["start_time"], t["end_time"]) for t in tasks)
assert len(spans) == 2 and spans[0][1] <= spans[1][0], spans
hosts = set()
experiments = call(f"{mlflow}/api/2.0/mlflow/experiments/search", admin, {"max_results": 100})
for run in runs:
    found = call(f"{mlflow}/api/2.0/mlflow/runs/search", admin, {
        "experiment_ids": [e["experiment_id"] for e in experiments["experiments"]],
        "filter": f"tags.prefect_flow_run_id = '{run}'"})
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in found.get("runs", [])]
    assert tags, f"no MLflow run of flow run {run}"
    hosts |= {t["host"] for t in tags}
assert len(hosts) == 2, hosts
new_versions = sorted(set(versions()) - set(before_versions), key=int)
assert len(new_versions) == 2, new_versions
assert models_in_s3() >= before_models + 2
# a deployment edited to run a shell step first (any API user may): the worker refuses the
# run before any container starts, and the run is CRASHED saying why
call(f"{prefect}/deployments/{deployment['id']}", auth, {"pull_steps": [
    {"prefect.deployments.steps.run_shell_script": {"script": "touch /tmp/pwned"}}]}, "PATCH")
edited = call(f"{prefect}/deployments/{deployment['id']}/create_flow_run", auth,
              {"parameters": params})["id"]
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    state = call(f"{prefect}/flow_runs/{edited}", auth)["state"]
    if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
        break
    time.sleep(2)
assert state["type"] == "CRASHED" and "this worker runs only" in state["message"], state
call(f"{prefect}/deployments/{deployment['id']}", auth, {"pull_steps": []}, "PATCH")
made = subprocess.run(["podman", "ps", "-a", "--format", "json", "--filter",
                       f"label=io.prefect.flow-run-id={edited}"], capture_output=True,
                      text=True, check=True).stdout
assert not json.loads(made or "[]"), made
summary = {"flow_runs": runs, "containers": sorted(i[:12] for i in ids), "image": sorted(image),
           "hosts": sorted(hosts), "versions": new_versions, "register_spans": spans}
json.dump(summary, open(sys.argv[1], "w"), indent=1)
print(f"docker pool: 2 retrains at once, each in a fresh container of {', '.join(image)} "
      f"({', '.join(summary['containers'])}), removed after; only /datasets mounted, read-only; "
      f"MLflow login runner; versions {', '.join(new_versions)} registered, their register "
      "stages in turn; a run asking for volumes refused (422); a run of the deployment edited "
      "to run a shell step refused by the worker (CRASHED, no container)")
EOF
# --- the model server and Prometheus, once a champion exists ------------------------------
log "build cifar10-mlops-prometheus:bookworm (Debian's prometheus package)"
podman build -q --network host "${DEBIAN_BASE[@]}" -t cifar10-mlops-prometheus:bookworm \
  -f docker/prometheus/Containerfile docker/prometheus >/dev/null
log "up: model-server, prometheus"
compose up -d --no-deps model-server prometheus >>"$WORK/up.log" 2>&1
healthy model-server 300
healthy prometheus 120
MODEL_PORT=$MODEL_PORT PROMETHEUS_PORT=$PROMETHEUS_PORT "$ROOT/.venv/bin/python" - <<'EOF'
import json
import os
import time
import urllib.parse
import urllib.request

model = f"http://127.0.0.1:{os.environ['MODEL_PORT']}"
prometheus = f"http://127.0.0.1:{os.environ['PROMETHEUS_PORT']}"
served = json.loads(urllib.request.urlopen(f"{model}/version", timeout=10).read())["model"]
body = json.dumps({"inputs": [[[[0, 0, 0]] * 32] * 32] * 2}).encode()
request = urllib.request.Request(f"{model}/invocations", body, {"Content-Type": "application/json"})
assert urllib.request.urlopen(request, timeout=60).status == 200


def query(expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    return json.loads(urllib.request.urlopen(url, timeout=10).read())["data"]["result"]


deadline = time.monotonic() + 90  # scraped every 15 s
expr = 'cifar10_requests_total{route="/invocations",status="200"}'
while not query(expr) and time.monotonic() < deadline:
    time.sleep(3)
[found] = query(expr)
[up] = query('up{job="model-server"}')
assert up["value"][1] == "1", up
rules = json.loads(urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10).read())
names = sorted(r["name"] for g in rules["data"]["groups"] for r in g["rules"])
assert len(names) == 5, names
print(f"model server: {served['name']} v{served['version']}, 1 prediction; Prometheus scraped "
      f"{expr} = {found['value'][1]}, up 1, alert rules {', '.join(names)}")
EOF
# --- the drift test: the server's window of noise images against the champion's reference ---
log "up: drift-monitor (serves the scheduled drift deployment)"
compose up -d --no-deps drift-monitor >>"$WORK/up.log" 2>&1
MODEL_PORT=$MODEL_PORT "$ROOT/.venv/bin/python" - <<'EOF'
import json
import os
import urllib.request

import numpy as np

model = f"http://127.0.0.1:{os.environ['MODEL_PORT']}"
noise = np.random.default_rng(0).integers(0, 256, (2, 64, 32, 32, 3))
for images in noise:  # 128 images: params.yaml monitor.min_images is 100
    body = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(f"{model}/invocations", body, {"Content-Type": "application/json"})
    assert urllib.request.urlopen(request, timeout=120).status == 200
EOF
sleep 5  # the server writes its window every MODEL_SAMPLE_SECONDS (2 here)
deadline=$(($(date +%s) + 180))
until podman exec "$(container drift-monitor)" prefect deployment inspect drift/drift-hourly >/dev/null 2>&1; do
  [[ $(date +%s) -lt $deadline ]] || { podman logs --tail 40 "$(container drift-monitor)" >&2; die "no drift deployment in 180 s"; }
  sleep 3
done
log "run the drift deployment once"
podman exec "$(container drift-monitor)" prefect deployment run drift/drift-hourly --watch \
  --watch-timeout 600 >"$WORK/drift.log" 2>&1 ||
  { tail -40 "$WORK/drift.log" >&2; podman logs --tail 60 "$(container drift-monitor)" >&2; die "the drift test failed"; }
MLFLOW_PORT=$MLFLOW_PORT PREFECT_PORT=$PREFECT_PORT MODEL_PORT=$MODEL_PORT \
  PROMETHEUS_PORT=$PROMETHEUS_PORT "$ROOT/.venv/bin/python" - <<'EOF'
import base64
import json
import os
import time
import urllib.parse
import urllib.request


def call(url, auth=None, body=None):
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as answer:
        return answer.read()


prefect, auth = f"http://127.0.0.1:{os.environ['PREFECT_PORT']}/api", os.environ["PREFECT_AUTH_STRING"]
[report] = json.loads(call(f"{prefect}/artifacts/filter", auth,
                           {"artifacts": {"key": {"any_": ["drift-report"]}}}))
assert report["data"].startswith("# **Drift**"), report["data"][:200]
events = json.loads(call(f"{prefect}/events/filter", auth,
                         {"filter": {"event": {"name": ["cifar10.drift.detected"]}}, "limit": 5}))
[event] = events["events"]
mlflow = f"http://127.0.0.1:{os.environ['MLFLOW_PORT']}"
admin = f"admin:{os.environ['MLFLOW_ADMIN_PASSWORD']}"
name = urllib.parse.urlencode({"experiment_name": "cifar10-cnn-drift"})
experiment = json.loads(call(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?{name}", admin))
runs = json.loads(call(f"{mlflow}/api/2.0/mlflow/runs/search", admin,
                       {"experiment_ids": [experiment["experiment"]["experiment_id"]]}))["runs"]
assert len(runs) == 1, runs
metrics = call(f"http://127.0.0.1:{os.environ['MODEL_PORT']}/metrics").decode()
assert "cifar10_drift_detected 1.0" in metrics, [x for x in metrics.splitlines() if "drift" in x]
prometheus = f"http://127.0.0.1:{os.environ['PROMETHEUS_PORT']}"
deadline, found = time.monotonic() + 60, None  # scraped every 15 s
while time.monotonic() < deadline:
    query = urllib.parse.urlencode({"query": "cifar10_drift_detected"})
    found = json.loads(call(f"{prometheus}/api/v1/query?{query}"))["data"]["result"]
    if found and found[0]["value"][1] == "1":
        break
    time.sleep(3)
else:
    raise AssertionError(f"Prometheus has cifar10_drift_detected {found}")
print(f"drift: 128 noise images drifted ({', '.join(event['payload']['drifted'])}); Prefect "
      f"artifact drift-report and event {event['event']}; MLflow run {runs[0]['info']['run_id']} "
      "in cifar10-cnn-drift; cifar10_drift_detected 1 at the server and in Prometheus")
EOF
trap - EXIT
teardown
left=$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
[[ -z $left ]] || die "volumes left: $left"
log "passed: the stack built, started, retrained (in the worker and in containers of the docker pool), registered and stored, served, scraped and drift-tested, with logins; nothing left running"

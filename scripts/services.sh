#!/usr/bin/env bash
# Start, stop or list the local services on 127.0.0.1, without Docker (`make services`):
#   mlflow      MLflow server/UI on the stages' embedded store (under mlruns/)       :MLFLOW_PORT
#   prefect     Prefect server and UI (its database under PREFECT_HOME)             :PREFECT_PORT
#   deployment  the scheduled `retrain` deployment served against that Prefect server
# Each runs in the background with its pid and log in .services/.
set -euo pipefail

MLFLOW_PORT=${MLFLOW_PORT:-5000}
PREFECT_PORT=${PREFECT_PORT:-4200}
DIR=.services
export PREFECT_SERVER_ANALYTICS_ENABLED=false  # no telemetry calls home
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"

# The embedded store the stages log to (its one home: cifar10_mlops.tracking).
store_uri() { python -c 'from cifar10_mlops import tracking; print(tracking.DEFAULT_TRACKING_URI)'; }

command_of() {
  case $1 in
    mlflow) echo "mlflow server --backend-store-uri $(store_uri) \
      --default-artifact-root mlruns/artifacts --host 127.0.0.1 --port ${MLFLOW_PORT}" ;;
    prefect) echo "prefect server start --host 127.0.0.1 --port ${PREFECT_PORT}" ;;
    deployment) echo "python -m flows.deploy" ;;
  esac
}

health_of() {
  case $1 in
    mlflow) echo "http://127.0.0.1:${MLFLOW_PORT}/health" ;;
    prefect) echo "${PREFECT_API_URL}/health" ;;
    deployment) echo "" ;;
  esac
}

running() { [[ -f $DIR/$1.pid ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start() {
  local name=$1 url
  mkdir -p "$DIR" mlruns
  if running "$name"; then echo "$name: already running (pid $(cat "$DIR/$name.pid"))"; return; fi
  url=$(health_of "$name")
  if [[ -n $url ]] && curl -sf "$url" >/dev/null; then
    echo "error: $url already answers: another $name server holds the port" >&2; exit 1
  fi
  # shellcheck disable=SC2046
  setsid $(command_of "$name") >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
  for _ in $(seq 120); do
    sleep 1
    if ! running "$name"; then
      echo "error: $name exited; last lines of $DIR/$name.log:" >&2; tail -5 "$DIR/$name.log" >&2
      rm -f "$DIR/$name.pid"; exit 1
    fi
    if [[ -z $url ]]; then
      grep -q "is being served" "$DIR/$name.log" && break
    elif curl -sf "$url" >/dev/null; then break; fi
  done
  echo "$name: started (pid $(cat "$DIR/$name.pid"), log $DIR/$name.log)"
}

stop() {
  local name=$1 pid
  if running "$name"; then
    pid=$(cat "$DIR/$name.pid")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null || true  # what did not stop in 30 s, and its children
    echo "$name: stopped"
  fi
  rm -f "$DIR/$name.pid"
}

case ${1:-} in
  start)
    for name in "${@:2}"; do start "$name"; done
    running mlflow && echo "MLflow UI:  http://127.0.0.1:${MLFLOW_PORT}"
    running prefect && echo "Prefect UI: http://127.0.0.1:${PREFECT_PORT}" \
      "(export PREFECT_API_URL=${PREFECT_API_URL} to use it)"
    true ;;
  stop)
    for name in "${@:2}"; do stop "$name"; done ;;
  running)
    running "$2" ;;
  status)
    for name in mlflow prefect deployment; do
      if running "$name"; then echo "$name: running (pid $(cat "$DIR/$name.pid"))"
      else echo "$name: stopped"; fi
    done ;;
  *) echo "usage: $0 start|stop NAME... | running NAME | status" >&2; exit 2 ;;
esac

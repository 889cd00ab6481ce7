#!/usr/bin/env bash
# Start, stop or list the local services on 127.0.0.1, without Docker (`make services`):
#   mlflow      MLflow server/UI on the stages' embedded store (under mlruns/)       :MLFLOW_PORT
#   prefect     Prefect server and UI (its database under PREFECT_HOME)             :PREFECT_PORT
#   deployment  the scheduled `retrain` deployment served against that Prefect server
# Each runs in the background with its pid and log in .services/.
# The Prefect server takes requests only with the auth string in .services/prefect.auth (made
# once, mode 600; the UI asks for it) and cross-origin requests only from its own UI, so
# neither another local user nor a web page open in a browser can start runs or change
# params.yaml through it. The MLflow server runs MLflow's basic-auth app: every request needs
# a login, the user `admin` with the password in .services/mlflow.auth (made once, mode 600;
# its users and permissions in .services/mlflow-auth.db), so nobody who reaches the port can
# move `champion` or delete runs. MLflow's defaults also refuse Host headers other than this
# machine's and private addresses (DNS rebinding), and writes from pages not on localhost.
set -euo pipefail

MLFLOW_PORT=${MLFLOW_PORT:-5000}
PREFECT_PORT=${PREFECT_PORT:-4200}
DIR=.services
AUTH=$DIR/prefect.auth
MLFLOW_AUTH=$DIR/mlflow.auth
MLFLOW_ADMIN=admin
export PREFECT_SERVER_ANALYTICS_ENABLED=false  # no telemetry calls home
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"

# The embedded store the stages log to (its one home: cifar10_mlops.core.tracking).
store_uri() { python -c 'from cifar10_mlops.core import tracking; print(tracking.DEFAULT_TRACKING_URI)'; }

command_of() {
  case $1 in
    mlflow) echo "mlflow server --app-name basic-auth --backend-store-uri $(store_uri) \
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

# A secret kept in $1: made once, kept (owner-only) while the file exists, so a restart keeps
# the UI's login and the clients' setting valid.
secret() {
  if [[ ! -s $1 ]]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(32))' >"$1")
  fi
  chmod 600 "$1"
  cat "$1"
}
auth_string() { secret "$AUTH"; }

# MLflow's basic-auth app: its settings (users and permissions in .services/mlflow-auth.db;
# everyone else reads, as MLflow's default), the admin's password and Flask's session secret.
mlflow_login() {
  (umask 077 && printf '%s\n' "[mlflow]" "default_permission = READ" \
    "database_uri = sqlite:///${PWD//%/%%}/$DIR/mlflow-auth.db" "admin_username = $MLFLOW_ADMIN" \
    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
    >"$DIR/mlflow-auth.ini")
  export MLFLOW_AUTH_CONFIG_PATH=$PWD/$DIR/mlflow-auth.ini MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_ADMIN
  MLFLOW_AUTH_ADMIN_PASSWORD=$(secret "$MLFLOW_AUTH")
  MLFLOW_FLASK_SERVER_SECRET_KEY=$(secret "$DIR/mlflow.secret")
  export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
}

# What a service needs in its environment (not its command line, which `ps` shows to all).
environment_of() {
  case $1 in
    mlflow) mlflow_login ;;
    prefect)  # the server, and the clients it runs itself
      PREFECT_SERVER_API_AUTH_STRING=$(auth_string)
      export PREFECT_SERVER_API_AUTH_STRING PREFECT_API_AUTH_STRING=$PREFECT_SERVER_API_AUTH_STRING
      # its UI, under either name of this machine (the UI calls PREFECT_API_URL, 127.0.0.1)
      local ui="http://127.0.0.1:${PREFECT_PORT},http://localhost:${PREFECT_PORT}"
      export PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS=$ui ;;
    deployment)
      export MLFLOW_PORT  # the retrain report's links to the MLflow UI
      if [[ -f $AUTH ]]; then
        PREFECT_API_AUTH_STRING=$(cat "$AUTH"); export PREFECT_API_AUTH_STRING
      fi ;;
  esac
}

# Whether the Prefect API refuses a request without the auth string and takes one with it
# (curl reads the header from stdin: an argument would show the secret in `ps`).
prefect_locked() {
  local api=${PREFECT_API_URL}/hello
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$api") == 401 ]] && [[ -f $AUTH ]] &&
    printf 'header = "Authorization: Basic %s"\n' "$(tr -d '\n' <"$AUTH" | base64 | tr -d '\n')" |
    curl -sf -o /dev/null -K - "$api"
}

# Whether the MLflow API refuses a request without a login and takes the admin's.
mlflow_locked() {
  local api="http://127.0.0.1:${MLFLOW_PORT}/api/2.0/mlflow/experiments/search?max_results=1"
  [[ $(curl -s -o /dev/null -w '%{http_code}' "$api") == 401 ]] && [[ -f $MLFLOW_AUTH ]] &&
    printf 'user = "%s:%s"\n' "$MLFLOW_ADMIN" "$(tr -d '\n' <"$MLFLOW_AUTH")" |
    curl -sf -o /dev/null -K - "$api"
}

locked() {
  case $1 in
    prefect) prefect_locked ;;
    mlflow) mlflow_locked ;;
    *) true ;;
  esac
}

start() {
  local name=$1 url
  mkdir -p "$DIR" mlruns
  if running "$name"; then
    echo "$name: already running (pid $(cat "$DIR/$name.pid"))"
    if ! locked "$name"; then
      echo "error: the running $name server does not require, or take, the login in" \
        "$DIR/$name.auth: restart it (make services-stop services)" >&2
      exit 1
    fi
    return
  fi
  url=$(health_of "$name")
  if [[ -n $url ]] && curl -sf "$url" >/dev/null; then
    echo "error: $url already answers: another $name server holds the port" >&2; exit 1
  fi
  (
    environment_of "$name"
    # shellcheck disable=SC2046
    exec setsid $(command_of "$name")
  ) >"$DIR/$name.log" 2>&1 &
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
  if ! locked "$name"; then
    echo "error: $name does not require the login in $DIR/$name.auth; see $DIR/$name.log" >&2
    stop "$name" >/dev/null; exit 1
  fi
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
    running mlflow && echo "MLflow UI:  http://127.0.0.1:${MLFLOW_PORT} (user $MLFLOW_ADMIN," \
      "password in $MLFLOW_AUTH; for clients: export" \
      "MLFLOW_TRACKING_USERNAME=$MLFLOW_ADMIN MLFLOW_TRACKING_PASSWORD=\$(cat $PWD/$MLFLOW_AUTH))"
    running prefect && echo "Prefect UI: http://127.0.0.1:${PREFECT_PORT}" \
      "(log in with the auth string in $AUTH; for the CLI: export" \
      "PREFECT_API_URL=${PREFECT_API_URL} PREFECT_API_AUTH_STRING=\$(cat $PWD/$AUTH))"
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

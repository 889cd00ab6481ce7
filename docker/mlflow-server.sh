#!/bin/sh
# The compose `mlflow` service: `mlflow server` with MLflow's basic-auth app, the arguments
# passed on. The app reads its settings from an ini file; this writes one (owner-only, in a
# temporary folder) from the environment compose gives the service, so no password is baked
# into the image or shown on a command line:
#   MLFLOW_AUTH_DATABASE_URI     users and permissions (a PostgreSQL database of their own)
#   MLFLOW_AUTH_ADMIN_USERNAME   the admin, made on first start ...
#   MLFLOW_AUTH_ADMIN_PASSWORD   ... with this password (MLflow reads both from the environment)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  Flask's session secret (MLflow reads it itself)
# Everyone else logged in may read (MLflow's default permission, READ).
set -eu
: "${MLFLOW_AUTH_DATABASE_URI:?MLFLOW_AUTH_DATABASE_URI is not set}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?MLFLOW_AUTH_ADMIN_PASSWORD is not set}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?MLFLOW_FLASK_SERVER_SECRET_KEY is not set}"
umask 077
dir=$(mktemp -d)
printf '%s\n' "[mlflow]" "default_permission = READ" \
  "database_uri = $(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')" \
  "admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" \
  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth" \
  >"$dir/auth.ini"
export MLFLOW_AUTH_CONFIG_PATH="$dir/auth.ini"
exec mlflow server --app-name basic-auth "$@"

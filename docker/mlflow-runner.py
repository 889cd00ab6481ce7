"""The compose `mlflow-runner` job: the MLflow login of the docker pool's flow runs, then exit.

  python docker/mlflow-runner.py

As MLflow's admin (MLFLOW_TRACKING_USERNAME and _PASSWORD) at MLFLOW_TRACKING_URI, it creates
the user MLFLOW_RUNNER_USERNAME (default `runner`) with MLFLOW_RUNNER_PASSWORD, or sets that
password on the user if it exists; makes params.yaml's experiment (mlflow.experiment) and
registered model (register.model_name) where missing; and gives the user EDIT on both: it may
log runs there, register versions and move the aliases. Everything else it may only read (the
server's default permission): no deleting, no managing users or permissions. Run on every
`docker compose up`: what exists is kept.
"""

import os
import sys
from pathlib import Path

from cifar10_mlops.core.settings import load_params

EDIT = "EDIT"


def main() -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException, RestException
    from mlflow.server import get_app_client

    username = os.environ.get("MLFLOW_RUNNER_USERNAME", "").strip() or "runner"
    password = os.environ.get("MLFLOW_RUNNER_PASSWORD", "")
    if not password:
        sys.exit("error: MLFLOW_RUNNER_PASSWORD is not set: the runner's login needs a password")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        sys.exit(f"error: MLFLOW_TRACKING_URI {uri!r} is not an MLflow server")
    params = load_params(Path("params.yaml"))
    experiment_name, model_name = params.mlflow.experiment, params.register.model_name
    auth, client = get_app_client("basic-auth", tracking_uri=uri), MlflowClient(uri)
    try:
        try:
            auth.create_user(username, password)
            print(f"MLflow user {username}: created")
        except RestException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            auth.update_user_password(username, password)
            print(f"MLflow user {username}: exists, password set")
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = (
            experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        )
        try:
            client.get_registered_model(model_name)
        except RestException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            client.create_registered_model(model_name)
        for kind, resource in (("experiment", experiment_id), ("registered_model", model_name)):
            try:
                auth.grant_user_permission(username, kind, resource, EDIT)
            except RestException as exc:  # granted before, maybe another permission: set it
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                auth.revoke_user_permission(username, kind, resource)
                auth.grant_user_permission(username, kind, resource, EDIT)
        print(
            f"MLflow user {username}: {EDIT} on experiment {experiment_name} ({experiment_id}) "
            f"and registered model {model_name}"
        )
    except MlflowException as exc:
        sys.exit(f"error: MLflow server {uri}: {str(exc).splitlines()[0]}")


if __name__ == "__main__":
    main()

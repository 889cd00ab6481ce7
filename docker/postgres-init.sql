-- One PostgreSQL server, one role and database(s) per service: the role `mlflow` owns the
-- databases mlflow and mlflow_auth (MLflow's basic-auth app: its users and permissions), the
-- role `prefect` owns prefect; neither can connect to the other's, and neither is a superuser.
-- The official postgres image runs this once, when its volume is first initialised, as
-- POSTGRES_USER, with the container's environment (compose passes the two passwords); the
-- native integration test (tests/test_services.py) runs it the same way. psql >= 15 (\getenv).
\set ON_ERROR_STOP on
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv prefect_password PREFECT_DB_PASSWORD
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
REVOKE ALL ON DATABASE mlflow, mlflow_auth, prefect FROM PUBLIC;

-- One PostgreSQL server, one database per service. The official postgres image runs this once,
-- when its volume is first initialised, as POSTGRES_USER (who then owns the databases);
-- the native integration test (tests/test_services.py) runs it the same way.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
-- MLflow's basic-auth app: its users and permissions.
CREATE DATABASE mlflow_auth;

-- A second database for the Prefect server (the MLflow database is POSTGRES_DB).
CREATE DATABASE prefect;

"""The ``latentflow`` CLI, the stages it runs (one module each, declared in dvc.yaml) and the Prefect flow."""

"""The MLflow model registry: logging runs, registering models, moving the champion alias, the pyfunc wrapper."""

"""MLflow models-from-code entry point for the latent-diffusion generator.

``mlflow.pyfunc.save_model(python_model=<this file>)`` copies this file into the model and runs it
at load time, so nothing of ours is pickled: loading a registered version needs only the installed
``latentflow`` package (``components``), MLflow and torch. See MLflow's "Models from Code" guide.
"""

from mlflow.models import set_model

from components.registry.mlflow_registry import LatentDiffusionPyfunc

set_model(LatentDiffusionPyfunc())

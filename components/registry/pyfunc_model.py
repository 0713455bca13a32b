"""MLflow models-from-code entry point for the latent-diffusion generator.

``mlflow.pyfunc.save_model(python_model=<this file>)`` copies this file into the model and runs it
at load time, so nothing of ours is pickled. The model also bundles the ``components`` package
(``code_paths``), which MLflow puts first on ``sys.path`` before running this file: loading needs only the
pinned distributions of the model's ``requirements.txt`` (MLflow, torch, safetensors, numpy, pandas,
Pillow), not an installed ``latentflow``. Keep this import chain free of other third-party packages.
See MLflow's "Models from Code" guide.
"""

from mlflow.models import set_model

from components.registry.mlflow_registry import LatentDiffusionPyfunc

set_model(LatentDiffusionPyfunc())

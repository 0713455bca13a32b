"""latentflow's stage logic in layers (DESIGN.md): registry and generation over training, over models, data and
evaluation, over diffusion and io. Nothing here imports ``pipelines``, Prefect or DVC."""

"""Training: the shared loop (DDP, exact resume, EMA, budgets) and the autoencoder and latent-diffusion trainers on it."""

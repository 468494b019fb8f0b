"""Training: the DiT loop, its run folder, checkpoints and monitoring, and autoencoder training."""

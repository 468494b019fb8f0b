"""Sampling jobs over a trained model: seeded images, grids, 50K npz files and latent walks."""

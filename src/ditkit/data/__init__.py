"""Data: image folders, embedded MNIST, the latent store, the resumable loader, the autoencoder and class names."""

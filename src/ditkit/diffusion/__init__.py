"""ADM's Gaussian diffusion (the training objective of DiT) and its samplers (DDPM, DDIM, DPM-Solver++)."""

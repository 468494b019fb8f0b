"""Interchange with other tools: diffusers pipelines and the official DiT checkpoints."""

"""The DiT network, its cost in Gflops and its weights on disk (it never sees a noise schedule or a dataset)."""

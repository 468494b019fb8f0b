"""Flow matching beside diffusion: SiT's interpolants, objective and samplers (Ma et al. 2024, arXiv 2401.08740)."""

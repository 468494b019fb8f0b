"""Metrics: Inception features (ADM-exact), FID / sFID / IS, precision / recall, the digit classifier, scoring."""

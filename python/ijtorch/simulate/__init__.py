"""Simulated data with exact ground truth: time-lapse movies with divisions (``movies``) and
anisotropic 3-D nuclei stacks (``nuclei``), for tests, benchmarks and demos."""

"""Evaluation: the synthetic-set alignment probe, SR fidelity, prompt suites, FID/CLIP."""

"""Training: one Ray Train + DeepSpeed run per cascade stage."""

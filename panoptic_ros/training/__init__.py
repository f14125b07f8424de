"""Training: targets and losses per method, the training loop and its validation."""

"""Training: two-stage fit, distribution strategies, callbacks, cross-validation."""

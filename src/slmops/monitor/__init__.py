"""Watching a deployed model: drift against its training data, sampled quality, the feedback loop."""

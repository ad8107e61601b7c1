"""Deployment targets: device profiles and (later) edge bundles."""

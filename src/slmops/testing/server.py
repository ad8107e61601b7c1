"""A server in a background thread for tests and notebooks: :mod:`slmops.serve.background`, re-exported here."""

from slmops.serve.background import free_port, running_server

__all__ = ["free_port", "running_server"]

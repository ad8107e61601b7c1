"""Fixtures for the evaluation tests (shared with tests/bench and tests/report through ``evalkit``)."""

from evalkit import eval_store, fragile_server, intent_data, label_server, model, run_cli, tiny_llama, tiny_rt, tiny_server  # noqa: F401

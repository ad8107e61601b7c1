"""Reuse the evaluation tests' fixtures (tiny model, test servers) from tests/evaluate."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "evaluate"))

from evalkit import eval_store, fragile_server, intent_data, label_server, model, run_cli, tiny_llama, tiny_rt, tiny_server  # noqa: F401

"""Deployment validation: each checklist item on a local tiny model, on servers whose behaviour we control, and via the CLI."""

from __future__ import annotations

import json
import os
from typing import Any

from slmops.evaluate.targets import Reply
from slmops.evaluate.validate import ValidateConfig, check_memory
from slmops.stage.runner import run_stage

SMALL = {"limit": 3, "max_tokens": 4, "memory_requests": 8, "memory_warmup": 2, "max_rss_slope_kb": 100_000,
         "latency_lengths": [8, 48], "latency_repeats": 2, "latency_output_tokens": 4, "long_input_words": 1500}


def checks(art: Any) -> dict[str, dict[str, Any]]:
    rep = json.loads(art.file("report.json").read_text())
    return {c["name"]: c for c in rep["checks"]}


def test_local_model_checklist(store: Any, model: Any, intent_data: Any) -> None:
    art = run_stage("validate", {"model": model, "data": intent_data}, SMALL, store=store).artifact
    c = checks(art)
    assert list(c) == ["domain_queries", "output_format", "memory_stable", "latency_consistent", "edge_cases"]
    assert c["domain_queries"]["data"]["queries"] == 3
    assert c["output_format"]["status"] == "fail"  # a random model does not answer with the intent labels
    assert c["memory_stable"]["status"] == "pass" and c["memory_stable"]["data"]["requests"] == 8
    assert c["latency_consistent"]["status"] in ("pass", "fail") and set(c["latency_consistent"]["data"]["lengths"]) == {"8", "48"}
    cases = c["edge_cases"]["data"]["cases"]
    assert cases["very_long"]["outcome"] == "rejected"  # longer than the context: a clean error, not a crash
    assert cases["unknown_role"]["outcome"] == "rejected"
    assert cases["template_injection"]["rendered_literally"] is True
    assert c["edge_cases"]["data"]["healthy_after"] == "answered"
    crashed = [n for n, r in cases.items() if r["outcome"] == "crashed"]
    assert (c["edge_cases"]["status"] == "fail") == bool(crashed)
    assert [p.role for p in art.manifest.parents] == ["data", "model"]
    assert art.manifest.metrics["check.domain_queries"] in ("pass", "fail")


class Leaky:
    kind, concurrency, runtime, label = "local", 1, None, "leaky"

    def __init__(self, leak: int) -> None:
        self.leak, self.held = leak, 0

    def chat(self, messages: Any, **kw: Any) -> Reply:
        self.held += self.leak
        return Reply("ok", 0.001)

    def probe(self) -> int:
        return 100 * 2**20 + self.held


def test_memory_growth_is_caught() -> None:
    cfg = ValidateConfig(memory_requests=20, memory_warmup=2, max_rss_slope_kb=64)
    leaky = Leaky(leak=2**20)
    bad = check_memory(leaky, [], cfg, probe=leaky.probe)  # type: ignore[arg-type]
    assert bad.status == "fail" and bad.data["slope_bytes_per_request"] == 2**20 and "1024.0 KiB/request" in bad.detail
    steady = Leaky(leak=0)
    assert check_memory(steady, [], cfg, probe=steady.probe).status == "pass"  # type: ignore[arg-type]


def test_server_with_known_answers_passes(store: Any, intent_data: Any, label_server: str) -> None:
    cfg = {**SMALL, "url": label_server, "server_pid": os.getpid()}  # the test server runs in this process
    art = run_stage("validate", {"data": intent_data}, cfg, store=store).artifact
    c = checks(art)
    assert c["domain_queries"]["status"] == "pass" and c["output_format"]["status"] == "pass"
    assert "labels" in c["output_format"]["detail"]
    assert c["memory_stable"]["status"] == "pass"
    assert c["latency_consistent"]["status"] == "skip"  # one-word answers have no time per output token
    cases = c["edge_cases"]["data"]["cases"]
    assert cases["unknown_role"]["outcome"] == "rejected" and cases["no_messages"]["outcome"] == "rejected"
    assert c["edge_cases"]["status"] == "pass"
    assert json.loads(art.file("report.json").read_text())["passed"] is True
    no_pid = checks(run_stage("validate", {"data": intent_data}, {**SMALL, "url": label_server}, store=store).artifact)
    assert no_pid["memory_stable"]["status"] == "skip" and "--server-pid" in no_pid["memory_stable"]["detail"]


def test_validate_cli_exit_codes(run_cli: Any, label_server: str, fragile_server: str) -> None:
    run_cli("data", "synth", "support-intent", "--n", "20", "--name", "d")
    args = ["--data", "d", "--limit", "2", "--max-tokens", "4", "--memory-requests", "5", "--max-rss-slope-kb", "100000",
            "--latency-lengths", "8,32", "--long-input-words", "500"]
    code, out, err = run_cli("validate", "--url", label_server, *args, "--json")
    assert code == 0, err
    assert json.loads(out)["report"]["passed"] is True
    # a server that answers a lone surrogate with a 500 has crashed: the checklist fails (exit 3), and only that case is blamed
    code, out, err = run_cli("validate", "--url", fragile_server, *args, "--json")
    assert code == 3 and "edge_cases" in err
    cases = {c["name"]: c for c in json.loads(out)["report"]["checks"]}["edge_cases"]["data"]["cases"]
    assert cases["lone_surrogates"]["outcome"] == "crashed" and "500" in cases["lone_surrogates"]["error"]
    assert [n for n, c in cases.items() if c["outcome"] == "crashed"] == ["lone_surrogates"]

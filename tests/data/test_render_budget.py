"""Chat templates render under a time, size and memory budget in worker processes (issue 17 item 1).

A template is data from a model file: looping for hours, building a huge string or printing
without end must end in :class:`TemplateBudgetExceeded` at its budget, without growing or pinning
the caller; the sandbox's own errors keep their types across the process boundary.
"""

from __future__ import annotations

import threading
import time

import pytest

from slmops.data.render_worker import RenderBudget, RendererStopped, RenderPool, TemplateBudgetExceeded, render_budget
from slmops.data.templates import ChatTemplateError, render_chat
from slmops.errors import ConfigError, DataError

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
GROW = "{% set ns = namespace(s='xxxxxxxx') %}{% for n in [1000, 1000, 256] %}{% set ns.s = ns.s * n %}{% endfor %}{{ ns.s }}"
FLOOD = "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}"
MSGS = [{"role": "user", "content": "hi \ud800 there"}]


def _looping_render(pool: RenderPool, budget: RenderBudget) -> tuple[threading.Thread, list[BaseException]]:
    """Start rendering the looping template on ``pool`` in a thread; return once a worker holds it (and what it raised, later)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            with render_budget(budget, pool=pool):
                render_chat(LOOP, MSGS)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            raised.append(exc)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 60
    while not pool.busy and time.monotonic() < deadline:
        time.sleep(0.01)
    return t, raised


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_plain_templates_render_as_before() -> None:
    out = render_chat(CHATML, MSGS, add_generation_prompt=True)
    assert out == "<|im_start|>user\nhi \ud800 there<|im_end|>\n<|im_start|>assistant\n"  # lone surrogates survive the trip


def test_a_looping_template_stops_at_its_time_budget() -> None:
    with render_budget(timeout_s=0.5), pytest.raises(TemplateBudgetExceeded) as exc:
        render_chat(LOOP, MSGS)
    assert exc.value.limit == "time" and "0.5s" in exc.value.message
    assert isinstance(exc.value, ConfigError)
    assert render_chat(CHATML, MSGS)  # the next render works (the worker survived or was replaced)


def test_a_string_building_template_stops_at_its_memory_budget_and_the_caller_does_not_grow() -> None:
    before = rss_mb()
    with render_budget(memory_mb=256), pytest.raises(TemplateBudgetExceeded) as exc:
        render_chat(GROW, MSGS)
    assert exc.value.limit == "memory" and "256 MiB" in exc.value.message
    assert rss_mb() - before < 100


def test_output_is_capped_as_it_is_produced() -> None:
    with render_budget(max_chars=10_000), pytest.raises(TemplateBudgetExceeded) as exc:
        render_chat(FLOOD, MSGS)
    assert exc.value.limit == "size" and "10,000" in exc.value.message


def test_a_worker_that_stops_answering_is_killed_at_the_budget() -> None:
    """A render the child's own alarm cannot end (here: the child is frozen) is ended by the caller killing it."""
    import os
    import signal

    pool = RenderPool()
    t, outcome = _looping_render(pool, RenderBudget(timeout_s=1.0))
    worker = next(iter(pool.busy))
    os.kill(worker.proc.pid, signal.SIGSTOP)
    t.join(timeout=60)
    assert not t.is_alive() and isinstance(outcome[0], TemplateBudgetExceeded) and outcome[0].limit == "time"
    assert worker.proc.poll() is not None  # killed, not left behind
    pool.close()


def test_template_errors_keep_their_kinds_across_the_process() -> None:
    from jinja2.exceptions import SecurityError

    with pytest.raises(ChatTemplateError, match="unsafe") as exc:
        render_chat("{{ messages.__class__.__mro__ }}", MSGS)
    assert isinstance(exc.value.__cause__, SecurityError)
    with pytest.raises(ChatTemplateError, match="does not parse"):
        render_chat("{% for m in messages %}", MSGS)
    with pytest.raises(ChatTemplateError, match="ZeroDivisionError"):
        render_chat("{{ 1 / 0 }}", MSGS)
    with pytest.raises(DataError, match="alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", MSGS)


def test_closing_a_pool_ends_the_renders_it_runs() -> None:
    pool = RenderPool()
    t, errors = _looping_render(pool, RenderBudget(timeout_s=300))
    time.sleep(0.2)
    pool.close()
    t.join(timeout=30)
    assert not t.is_alive() and len(errors) == 1 and isinstance(errors[0], RendererStopped)
    with render_budget(pool=pool), pytest.raises(RendererStopped):
        render_chat(CHATML, MSGS)


def test_a_pool_keeps_a_worker_for_each_concurrent_render_it_may_get_again() -> None:
    """A burst of renders starts its workers once: the next burst of the same size reuses them (a start costs ~50 ms of CPU)."""
    memory_mb = RenderBudget().memory_mb
    pool = RenderPool(keep_idle=4)
    try:
        first = [pool.take(memory_mb) for _ in range(4)]
        for w in first:
            pool.give_back(w)
        assert len(pool.idle) == 4
        again = [pool.take(memory_mb) for _ in range(4)]
        assert {w.proc.pid for w in again} == {w.proc.pid for w in first}
        for w in again:
            pool.give_back(w)
    finally:
        pool.close()
    small = RenderPool(keep_idle=1)  # past its keep_idle a worker is stopped when given back
    try:
        a, b = small.take(memory_mb), small.take(memory_mb)
        small.give_back(a)
        small.give_back(b)
        assert small.idle == [a] and b.proc.wait(timeout=10) is not None
    finally:
        small.close()

"""Chat templates rendered under a time, size and memory budget, in worker processes that can be killed.

:mod:`slmops.data.templates` sandboxes what a chat template may *touch*; this module bounds what it
may *cost*. A template is data from a model file, and Jinja can loop ``range(100000)`` inside
``range(100000)`` or double a string thirty times: rendered in a thread, such a template pins that
thread (Python threads cannot be stopped) and grows the process without limit. So every render
runs in a child process (``python -m slmops.data.render_worker``) that:

* caps its address space (``RLIMIT_AS``, :attr:`RenderBudget.memory_mb`), so building a huge string
  ends in a ``MemoryError`` there and never in the caller;
* stops a render at its time budget with an alarm (the template's Python code is interrupted
  between two bytecodes) and caps the rendered text at :attr:`RenderBudget.max_chars`;
* has a CPU-time limit as a backstop, and exits when its stdin closes (the caller went away).

The caller waits at most the time budget plus a short grace; a child that has not answered by then
is killed (``SIGKILL``) and replaced on the next call, so no render outlives its budget. Children are
pooled (one per concurrent render, kept idle up to the pool's ``keep_idle``) and started once, so a render
costs one pipe round trip (well under a millisecond for a usual chat), not a process start (~65 ms,
~50 ms of CPU: ``benchmarks/render_workers.py``). A process that forks gets its own children.

The budget is taken from :func:`render_budget` (a context manager; the server sets each request's
from ``--render-timeout`` and the time left before the request's deadline).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slmops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Extra seconds the caller waits past the budget before it kills the child (the child's own alarm
#: answers first when the template runs Python code; the kill covers a long C-level operation).
GRACE_S = 1.0
#: Longest a fresh child may take to start (interpreter + Jinja import) on a busy machine.
START_TIMEOUT_S = 60.0
#: Idle children a pool keeps for the next render by default (a server keeps one per slot: see ``keep_idle``).
KEEP_IDLE = 2


@dataclasses.dataclass(frozen=True)
class RenderBudget:
    """What one chat-template render may cost."""

    timeout_s: float = 10.0  # wall-clock seconds for the render itself
    max_chars: int = 16_000_000  # characters of rendered text
    memory_mb: int = 1024  # address space of the rendering process

    def with_timeout(self, timeout_s: float) -> RenderBudget:
        return dataclasses.replace(self, timeout_s=max(0.0, timeout_s))


class TemplateBudgetExceeded(ConfigError):
    """A chat template took longer, rendered more, or used more memory than its budget allows.

    ``limit`` says which: ``"time"``, ``"size"`` or ``"memory"``.
    """

    def __init__(self, what: str, *, limit: str, why: str | None = None, fix: str | None = None) -> None:
        super().__init__(what, why=why, fix=fix)
        self.limit = limit


class RendererStopped(ConfigError):
    """The pool was closed (its owner, a server, is stopping) before or while the render ran."""

    def __init__(self) -> None:
        super().__init__("the chat template renderer has stopped", why="its owner (the server) is shutting down")


_budget: contextvars.ContextVar[RenderBudget] = contextvars.ContextVar("slmops_render_budget", default=RenderBudget())  # noqa: B039 (frozen)


def current_budget() -> RenderBudget:
    """The budget a render started now gets."""
    return _budget.get()


@contextlib.contextmanager
def render_budget(budget: RenderBudget | None = None, *, pool: RenderPool | None = None, **changes: Any) -> Iterator[RenderBudget]:
    """Renders inside the block get ``budget`` (default: the current one) with ``changes`` applied, in ``pool`` if given."""
    b = dataclasses.replace(budget or _budget.get(), **changes)
    token = _budget.set(b)
    pool_token = _pool_var.set(pool) if pool is not None else None
    try:
        yield b
    finally:
        if pool_token is not None:
            _pool_var.reset(pool_token)
        _budget.reset(token)


def _exceeded(limit: str, budget: RenderBudget) -> TemplateBudgetExceeded:
    what = {
        "time": f"the chat template took longer than {budget.timeout_s:g}s to render",
        "size": f"the chat template rendered more than {budget.max_chars:,} characters",
        "memory": f"the chat template needed more than {budget.memory_mb} MiB of memory to render",
    }[limit]
    return TemplateBudgetExceeded(
        what,
        limit=limit,
        why="chat templates come from the model's files and are rendered under a budget, so a costly one cannot stall the caller",
        fix="use a simpler chat template or shorter messages" + ("; slmops serve sets the time with --render-timeout" if limit == "time" else ""),
    )


_ERRORS: dict[str, type[ConfigError | DataError]] = {"ConfigError": ConfigError, "DataError": DataError}


def _raise_reply(reply: dict[str, Any], budget: RenderBudget) -> str:
    if "text" in reply:
        return str(reply["text"])
    err = reply.get("error") or {}
    if err.get("limit"):
        raise _exceeded(str(err["limit"]), budget)
    kind = str(err.get("kind"))
    if kind == "ChatTemplateError":
        from slmops.data.templates import ChatTemplateError

        raise ChatTemplateError(str(err.get("what")), why=err.get("why"), fix=err.get("fix")) from _cause(err.get("cause"))
    cls = _ERRORS.get(kind)
    if cls is None:
        raise ConfigError("the chat template renderer failed", why=str(err.get("what") or reply))
    raise cls(str(err.get("what")), why=err.get("why"), fix=err.get("fix")) from _cause(err.get("cause"))


def _cause(cause: Any) -> BaseException | None:
    """The Jinja exception behind a template error, rebuilt on this side (``SecurityError`` says the sandbox stopped it)."""
    import jinja2.exceptions

    if not isinstance(cause, list) or len(cause) != 2:
        return None
    cls = getattr(jinja2.exceptions, str(cause[0]), None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    try:
        return cls(str(cause[1]))
    except TypeError:
        return None


# --------------------------------------------------------------------------- the caller's side


class _Worker:
    """One child process that renders one request at a time."""

    def __init__(self, memory_mb: int) -> None:
        import slmops

        root = str(Path(slmops.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        self.memory_mb = memory_mb
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "slmops.data.render_worker", str(memory_mb)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        except OSError as exc:
            raise ConfigError("the chat template renderer cannot start", why=f"{sys.executable or 'python'}: {exc}",
                              fix="run slmops with a Python interpreter it can start again (sys.executable)") from exc
        self._buf = b""
        line = self._read_line(time.monotonic() + START_TIMEOUT_S)
        if line != b"ready":
            self.kill()
            raise ConfigError("the chat template renderer did not start", why=f"its first answer was {line[:200]!r}",
                              fix="check that this Python can run 'python -m slmops.data.render_worker'")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(Exception):
                f.close()  # type: ignore[union-attr]

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the child, or None when ``deadline`` passes or the child is gone."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def render(self, request: bytes, budget: RenderBudget) -> dict[str, Any]:
        """Send one request and wait for its answer (at most the budget plus :data:`GRACE_S`)."""
        try:
            self.proc.stdin.write(request + b"\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            self.kill()
            raise _Dead() from None
        line = self._read_line(time.monotonic() + budget.timeout_s + GRACE_S)
        if line is None:
            code = self.proc.poll()
            self.kill()
            if code is not None and code != -signal.SIGXCPU:  # died on its own: out of memory, not out of time
                return {"error": {"limit": "memory"}}
            return {"error": {"limit": "time"}}
        return dict(json.loads(line))


class _Dead(Exception):
    """The child was gone before it took the request."""


class RenderPool:
    """Render workers, started on demand; one render per worker at a time, at most ``keep_idle`` kept idle.

    The module keeps a default pool; a server makes its own so that stopping it (:meth:`close`) also
    kills the renders it still has running, and keeps as many idle as it can render at once: a
    worker dropped after a burst is a process started again (~50 ms of CPU, taken from the
    running generations) at the next one.
    """

    def __init__(self, keep_idle: int = KEEP_IDLE) -> None:
        self.keep_idle = max(0, int(keep_idle))
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.busy: set[_Worker] = set()
        self.closed = False
        _pools.add(self)

    def take(self, memory_mb: int) -> _Worker:
        with self.lock:
            if self.closed:
                raise RendererStopped()
            while self.idle:
                w = self.idle.pop()
                if w.alive() and w.memory_mb == memory_mb:
                    self.busy.add(w)
                    return w
                w.kill()
        w = _Worker(memory_mb)
        with self.lock:
            self.busy.add(w)
            if not self.closed:
                return w
        w.kill()
        raise RendererStopped()

    def warm(self, memory_mb: int = RenderBudget.memory_mb) -> None:
        """Start one worker ahead of the first render (so that render does not wait for a process to start)."""
        with contextlib.suppress(ConfigError):
            self.give_back(self.take(memory_mb))

    def give_back(self, w: _Worker) -> None:
        with self.lock:
            self.busy.discard(w)
            if w.alive() and len(self.idle) < self.keep_idle and not self.closed:
                self.idle.append(w)
                return
        w.kill()

    def close(self) -> None:
        """Kill every worker, idle or rendering (a caller waiting on one gets an error at once)."""
        with self.lock:
            self.closed = True
            idle, busy, self.idle, self.busy = self.idle, self.busy, [], set()
        if os.getpid() != self.pid:
            return
        for w in idle:
            w.kill()
        for w in busy:  # only the signal: the thread waiting on it sees the pipe close and cleans up
            with contextlib.suppress(OSError):
                w.proc.kill()


_pools: weakref.WeakSet[RenderPool] = weakref.WeakSet()
_default: RenderPool | None = None
_default_lock = threading.Lock()
_pool_var: contextvars.ContextVar[RenderPool | None] = contextvars.ContextVar("slmops_render_pool", default=None)


def _the_pool() -> RenderPool:
    global _default
    chosen = _pool_var.get()
    if chosen is not None:
        return chosen
    with _default_lock:
        if _default is None or _default.pid != os.getpid():  # a forked child never shares its parent's workers
            _default = RenderPool()
        return _default


def shutdown() -> None:
    """Kill the workers of every pool of this process (at exit)."""
    for pool in list(_pools):
        if pool.pid == os.getpid():
            pool.close()


import atexit

atexit.register(shutdown)


def render_bounded(template: str, messages: list[Any], variables: dict[str, Any], *, budget: RenderBudget | None = None) -> str:
    """Render in a worker process under ``budget`` (default: :func:`current_budget`).

    ``messages`` and ``variables`` must be plain JSON types (see :func:`slmops.data.templates.render_chat`).
    Raises :class:`TemplateBudgetExceeded` past a limit, and the template's own errors as
    :class:`~slmops.data.templates.ChatTemplateError` / :class:`~slmops.errors.DataError`.
    """
    budget = budget or _budget.get()
    if budget.timeout_s <= 0:
        raise _exceeded("time", budget)
    request = json.dumps(
        {"template": template, "messages": messages, "variables": variables, "timeout_s": budget.timeout_s, "max_chars": budget.max_chars}
    ).encode()
    pool = _the_pool()
    for attempt in range(2):
        worker = pool.take(budget.memory_mb)
        try:
            reply = worker.render(request, budget)
        except _Dead:
            pool.give_back(worker)
            if attempt:
                raise ConfigError("the chat template renderer exited before it took the request") from None
            continue
        pool.give_back(worker)
        if pool.closed and "text" not in reply:
            raise RendererStopped()
        return _raise_reply(reply, budget)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- the child's side


class _Alarm(BaseException):
    """Raised into the render by SIGALRM (a BaseException, so no template-level handler swallows it)."""


def _serve() -> None:  # pragma: no cover - runs in the child process (covered through render_bounded)
    import resource

    from slmops.data.templates import _render_here

    memory = int(sys.argv[1]) * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    def alarm(signum: int, frame: Any) -> None:
        raise _Alarm()

    signal.signal(signal.SIGALRM, alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's; this child ends when its stdin closes
    out = sys.stdout.buffer
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        reply: dict[str, Any]
        try:
            req = json.loads(line)
            used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
            cpu = int(used + req["timeout_s"] + 5)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
            signal.setitimer(signal.ITIMER_REAL, max(0.001, float(req["timeout_s"])))
            try:
                text = _render_here(req["template"], req["messages"], req["variables"], max_chars=int(req["max_chars"]))
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            reply = {"text": text}
        except _Alarm:
            reply = {"error": {"limit": "time"}}
        except MemoryError:
            reply = {"error": {"limit": "memory"}}
        except TemplateBudgetExceeded as exc:
            reply = {"error": {"limit": exc.limit}}
        except (ConfigError, DataError) as exc:
            cause = exc.__cause__
            reply = {"error": {"kind": type(exc).__name__, "what": exc.what, "why": exc.why, "fix": exc.fix,
                               "cause": [type(cause).__name__, str(cause)] if cause is not None else None}}
        except Exception as exc:  # noqa: BLE001 - reported to the caller, which raises it there
            reply = {"error": {"kind": "internal", "what": f"{type(exc).__name__}: {exc}"}}
        try:
            data = json.dumps(reply).encode()
        except MemoryError:
            data = json.dumps({"error": {"limit": "memory"}}).encode()
        out.write(data + b"\n")
        out.flush()


if __name__ == "__main__":
    from slmops.data import render_worker  # noqa: PLW0406 (the module's own classes, not __main__'s copies)

    render_worker._serve()

"""Render templates in render processes: off the event loop, with a time limit that holds.

A template is code written by anyone holding an API key. The sandbox (`sandbox.py`) bounds
every operation that could build a huge value in one step, but not how many steps a template
takes: three nested `range(100000)` loops run for days. Rendered in the API or the worker
itself, such a template blocks their event loop (every request, every other send) for as long
as it runs, and a thread would not help: it cannot be stopped, and it competes for the GIL.

So the API and the worker render through `render_isolated`, which sends each part to one of a
few long-lived child processes (`RENDER_PROCESSES`) and awaits the answer; the event loop only
waits on a future. Each part gets:

- a CPU-time limit (`RENDER_TIMEOUT_SECONDS`), enforced inside the render process by a
  profiling timer that raises into the template, which fails with the template's line and
  leaves the process ready for the next render;
- a wall-clock limit (`RENDER_WALL_SECONDS`), the backstop for what the timer cannot interrupt
  (one long C-level operation, a stuck process): the process is killed and replaced;
- the output limit (`rendering.MAX_OUTPUT_BYTES`) and the sandbox's value limits;
- a memory limit on the process (`RENDER_MEMORY_BYTES` on top of what it uses when idle), so a
  buffer growing piece by piece ends in a `MemoryError`, not in the host running out.

Each overrun is a `TemplateLimitError` ("took longer than 1 s to render", "output over 1000000
bytes"), a `TemplateRenderError` like any other: the API answers 422, a send fails for good.
Processes are started with `sys.executable` (not forked: the worker has threads of its own)
when first needed, so nothing is spent until a template is rendered.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import pickle
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from nurture.content import rendering
from nurture.content.rendering import (
    PARTS,
    RenderedContent,
    TemplateContent,
    TemplateLimitError,
    TemplateRenderError,
    assemble,
    check_context,
    render_part,
)
from nurture.content.sandbox import LimitExceeded

# The limits of one part's render (read when each render starts).
RENDER_TIMEOUT_SECONDS = 1.0  # CPU time, in the render process
RENDER_WALL_SECONDS = 5.0  # then the render process is killed
RENDER_MEMORY_BYTES = 512 * 1024 * 1024  # address space a render process may add to its own
# How many parts render at once (per API or worker process); more wait their turn.
RENDER_PROCESSES = max(2, min(4, os.cpu_count() or 1))
# A render process importing Jinja on a loaded machine can take a while.
_START_SECONDS = 60.0


async def render_isolated(template: TemplateContent, context: Mapping[str, Any]) -> RenderedContent:
    """`rendering.render`, in a render process, each part within the limits above.

    Raises `TemplateRenderError` (`TemplateLimitError` for an overrun) naming the template,
    the part and, when known, the line; `RuntimeError` when no render process can be started.
    """
    check_context(context)
    rendered: dict[str, str | None] = {}
    for part in PARTS:
        if getattr(template, part) is not None:
            rendered[part] = await render_part_isolated(template, part, context)
    return assemble(template, rendered)


async def render_part_isolated(
    template: TemplateContent, part: str, context: Mapping[str, Any]
) -> str:
    """One part of `template`, in a render process (see `render_isolated`)."""
    request = _Request(
        key=template.key,
        channel=template.channel,
        version=template.version,
        template_id=template.template_id,
        part=part,
        source=getattr(template, part),
        context=dict(context),
        cpu_seconds=RENDER_TIMEOUT_SECONDS,
        max_output_bytes=rendering.MAX_OUTPUT_BYTES,
    )
    pool = _pool()
    return await asyncio.get_running_loop().run_in_executor(pool.executor, pool.render, request)


class _Request:
    """What a render process gets: one part and its limits (pickled: the parent is trusted)."""

    def __init__(
        self,
        *,
        key: str,
        channel: str,
        version: int,
        template_id: Any,
        part: str,
        source: str,
        context: dict[str, Any],
        cpu_seconds: float,
        max_output_bytes: int,
    ) -> None:
        self.key = key
        self.channel = channel
        self.version = version
        self.template_id = template_id
        self.part = part
        self.source = source
        self.context = context
        self.cpu_seconds = cpu_seconds
        self.max_output_bytes = max_output_bytes

    def content(self) -> TemplateContent:
        return TemplateContent(
            key=self.key,
            channel=self.channel,
            version=self.version,
            subject=self.source if self.part == "subject" else None,
            html=self.source if self.part == "html" else None,
            text=self.source if self.part == "text" else None,
            template_id=self.template_id,
        )

    def limit_error(self, problem: str) -> TemplateLimitError:
        return TemplateLimitError(self.key, self.part, None, problem)


def _seconds(value: float) -> str:
    return f"{value:g} s"


# --- the parent side: a thread per render process ---------------------------------------------


class _RenderProcess:
    """One child process and the pipes to it, owned by one pool thread at a time."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parent.parent.parent)  # where `nurture` is
        code = (
            f"import sys; sys.path.insert(0, {root!r}); "
            "from nurture.content.isolation import serve; serve()"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            close_fds=True,
            start_new_session=True,  # Ctrl-C in a terminal is for the parent to handle
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin
        self._stdout = self.process.stdout.fileno()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._stdout, selectors.EVENT_READ)
        try:
            ready = self.receive(time.monotonic() + _START_SECONDS)
        except EOFError:
            ready = None
        if ready != b"ready":
            self.kill()
            raise RuntimeError("the template render process did not start (see its stderr)")

    def send(self, payload: bytes) -> None:
        _write(self._stdin.fileno(), payload)

    def receive(self, deadline: float) -> bytes | None:
        """One framed reply, or None when the deadline passes first; EOFError if the process
        ended."""
        header = self._read(8, deadline)
        if header is None:
            return None
        return self._read(int.from_bytes(header, "big"), deadline)

    def _read(self, size: int, deadline: float) -> bytes | None:
        chunks: list[bytes] = []
        while size > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                return None
            chunk = os.read(self._stdout, min(size, 1 << 20))
            if not chunk:
                raise EOFError("the render process ended")
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._selector.close()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class _Pool:
    """`size` threads, each lazily owning one render process (started, and replaced after a
    kill, by the thread itself, so the event loop never waits for it)."""

    def __init__(self, size: int) -> None:
        self.executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="nurture-render")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._processes: set[_RenderProcess] = set()

    def render(self, request: _Request) -> str:
        """Render one part in this thread's process; runs in a pool thread."""
        payload = pickle.dumps(request)
        for attempt in (1, 2):
            child = self._child()
            try:
                child.send(payload)
            except OSError:
                # It ended while idle (killed from outside): not this template's doing.
                self._discard(child)
                if attempt == 2:
                    raise
                continue
            break
        wall = RENDER_WALL_SECONDS
        try:
            reply = child.receive(time.monotonic() + wall)
        except EOFError:
            code = child.process.poll()
            self._discard(child)
            raise request.limit_error(f"stopped the render process (exit status {code})") from None
        if reply is None:
            self._discard(child)
            raise request.limit_error(f"took longer than {_seconds(wall)} to render")
        answer: dict[str, Any] = json.loads(reply)
        if answer.get("recycle"):
            self._discard(child)
        if "text" in answer:
            return str(answer["text"])
        if "error" in answer:
            error = answer["error"]
            kind = TemplateLimitError if error["limit"] else TemplateRenderError
            raise kind(request.key, request.part, error["line"], error["problem"])
        raise RuntimeError(f"rendering failed in the render process: {answer.get('crash')}")

    def _child(self) -> _RenderProcess:
        child: _RenderProcess | None = getattr(self._local, "child", None)
        if child is None or child.process.poll() is not None:
            if child is not None:
                self._discard(child)
            child = _RenderProcess()
            self._local.child = child
            with self._lock:
                self._processes.add(child)
        return child

    def _discard(self, child: _RenderProcess) -> None:
        child.kill()
        self._local.child = None
        with self._lock:
            self._processes.discard(child)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            children, self._processes = list(self._processes), set()
        for child in children:
            child.kill()


_POOL: _Pool | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> _Pool:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = _Pool(RENDER_PROCESSES)
        return _POOL


def shutdown() -> None:
    """Stop the render processes (they also end by themselves when this process does)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None:
        pool.close()


def _forget_pool() -> None:
    # A forked child has the pipes but not the threads: it starts its own pool if it renders.
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


# --- the child side: the render process --------------------------------------------------------

_armed = False
_cpu_limit = RENDER_TIMEOUT_SECONDS


def serve() -> None:
    """The render process: read a request from stdin, render, answer on stdout, until stdin
    ends (when the parent exits, whatever way it does)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    answers = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to stderr, never into the answers
    _limit_memory()
    if hasattr(signal, "SIGPROF"):
        signal.signal(signal.SIGPROF, _on_cpu_limit)
    _write(answers, b"ready")
    while True:
        payload = _read_request(0)
        if payload is None:
            return
        _write(answers, json.dumps(_answer(payload)).encode())


def _answer(payload: bytes) -> dict[str, Any]:
    try:
        request: _Request = pickle.loads(payload)
        try:
            _arm(request.cpu_seconds)
            try:
                text = render_part(
                    request.content(),
                    request.part,
                    request.context,
                    max_output_bytes=request.max_output_bytes,
                )
            finally:
                _disarm()
        except LimitExceeded as err:  # the timer fired outside the template's own code
            raise request.limit_error(str(err)) from err
        return {"text": text}
    except TemplateRenderError as err:
        return {
            "error": {
                "limit": isinstance(err, TemplateLimitError),
                "line": err.line,
                "problem": err.problem,
            },
            # After a MemoryError the process's heap is best started afresh.
            "recycle": isinstance(err.__cause__, MemoryError),
        }
    except Exception as err:  # a bug of ours, not the template's: the parent retries
        return {"crash": f"{type(err).__name__}: {err}", "recycle": True}


def _arm(cpu_seconds: float) -> None:
    global _armed, _cpu_limit
    _cpu_limit = cpu_seconds
    _armed = True
    if hasattr(signal, "setitimer"):
        # Then again every quarter second, in case the first one lands somewhere that swallows
        # it (Jinja reads some attributes under `except Exception`).
        signal.setitimer(signal.ITIMER_PROF, cpu_seconds, 0.25)


def _disarm() -> None:
    global _armed
    _armed = False
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_PROF, 0, 0)


def _on_cpu_limit(signum: int, frame: FrameType | None) -> None:
    if _armed:
        raise LimitExceeded(f"took longer than {_seconds(_cpu_limit)} to render")


def _limit_memory() -> None:
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (ImportError, OSError, ValueError, IndexError):
        return  # not Linux: the time limit and the sandbox's value limits still hold
    used = pages * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = used + RENDER_MEMORY_BYTES
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _read_request(fd: int) -> bytes | None:
    header = _read_exactly(fd, 8)
    if header is None:
        return None
    return _read_exactly(fd, int.from_bytes(header, "big"))


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, payload: bytes) -> None:
    data = memoryview(len(payload).to_bytes(8, "big") + payload)
    while data:
        data = data[os.write(fd, data) :]

"""The processes edgeq starts and waits for (runners under QEMU, the farm's edgeq commands), and
how edgeq stops: SIGTERM is handled like Ctrl-C (staging folders are removed on the way out), and
both are passed on to the children, so none outlives edgeq.

Children run in their own process group: a signal reaches them once, from here, and a child edgeq
gets the time to clean up its own stage before its parent reports."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from typing import Any, Iterator

_live: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping: list[int] = []  # the signal that stopped edgeq; no new child starts after it


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: unwinds like Ctrl-C, so every `finally` and staging folder cleans up."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}; nothing was written")


def raise_if_stopped() -> None:
    """Raise Interrupted if a signal came: Python swallows what a handler raises inside some
    callbacks (seen: SIGTERM during fork, inside logging's at-fork hook), so a commit point asks."""
    if _stopping:
        raise Interrupted(_stopping[0])


def run(argv: list[str], *, timeout: float | None = None, **popen: Any) -> subprocess.CompletedProcess:
    """subprocess.run, with the child registered while it runs. On timeout the child is killed and
    TimeoutExpired raised; on any other exception (an interrupt) it is ended before re-raising."""
    raise_if_stopped()
    popen.setdefault("process_group", 0)
    with subprocess.Popen(argv, **popen) as proc:
        with _lock:
            _live.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        except BaseException:
            _end(proc)
            raise
        finally:
            with _lock:
                _live.discard(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _end(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited after `grace` seconds."""
    try:
        proc.terminate()
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (blocked) until the block ends, then arrive as usual: around a fork,
    where Python swallows what the handler raises inside its at-fork hooks. A forked child inherits
    the block and must lift it (unhold_signals)."""
    held = {signal.SIGINT, signal.SIGTERM}
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def unhold_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def signals_handled() -> Iterator[None]:
    """In the main thread: SIGINT and SIGTERM raise Interrupted there, after passing SIGTERM to every
    running child (children of other threads too: the farm's validations). The previous handlers
    come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if not _stopping:
            _stopping.append(signum)
        with _lock:
            children = list(_live)
        for proc in children:
            try:
                proc.terminate()
            except ProcessLookupError:
                pass
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _stopping.clear()

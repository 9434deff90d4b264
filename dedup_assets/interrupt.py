"""Stop a command cleanly on SIGINT (Ctrl-C) or SIGTERM: at once, keeping nothing partial.

In the main thread, Dagster turns these signals into an interruption of the running step,
and an asset with a retry policy retries an interrupted step: a SIGTERM did not stop
``dedup-assets run``. So :func:`run_stoppable` runs the command's work in a thread (Dagster
leaves signals alone there) while the main thread waits for it or for a signal. On a signal
it reports it and ends the process with status 128 + the signal's number (130, 143).

Nothing partial survives: a partition's rows are written in one DuckDB transaction after its
step has returned (:mod:`dedup_assets.io_manager`), so the step in progress writes nothing;
worker processes end with this process (:mod:`dedup_assets.core.parallel`). The next run
resumes from the partitions written (:mod:`dedup_assets.runner`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_stoppable(work: Callable[[], T], on_signal: Callable[[str], None]) -> T:
    """``work()``, unless SIGINT or SIGTERM arrives first: then ``on_signal(name)`` (e.g.
    ``"SIGTERM"``) and the process exits at once with status 128 + the signal number.
    Outside the main thread (where no handler can be set) this is just ``work()``."""
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    received: list[int] = []
    def note(signum: int, _frame: object) -> None:
        received.append(signum)

    old = {sig: signal.signal(sig, note) for sig in SIGNALS}
    try:
        thread = threading.Thread(target=target, name="stoppable-work", daemon=True)
        thread.start()
        while thread.is_alive() and not received:
            thread.join(0.1)
        if received:
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            on_signal(signal.Signals(received[0]).name)
            sys.stdout.flush()
            sys.stderr.flush()
            # no interpreter shutdown: the work thread is still running, and its step must
            # not finish; what it has not committed is dropped
            os._exit(128 + received[0])
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]

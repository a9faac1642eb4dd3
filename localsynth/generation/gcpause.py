"""Python's cyclic garbage collector paused around the stage's own bulk work.

A wave makes a few Python objects per request (requests, message lists, reasons): each 700
of them start a collection, and the older generations' collections walk every live object of
the process (the backend's answers too). None of that work can free anything the stage makes:
its objects hold no cycles and go with their last reference. So the collector is paused while
a wave is planned, screened and decided (measured: 0.2 s of 1.3 s for 10^5 requests), and only
then: never while a backend or a judge runs, which may make cyclic garbage for minutes.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_paused = 0  # blocks inside a pause, on every thread
_resume = False  # whether the collector ran when the first of them began


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the collector (if it runs) for the block; what it finds waits for the next one.
    Pauses on several threads overlap: the collector resumes when the last of them ends."""
    global _paused, _resume
    with _lock:
        if _paused == 0:
            _resume = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0 and _resume:
                gc.enable()

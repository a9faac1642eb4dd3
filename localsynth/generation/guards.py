"""What a shard's run holds while it works: the completion log flushed and the engine closed
whatever stops it, and SIGTERM turned into the same stop as Ctrl-C."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from localsynth.backends.base import Backend
from localsynth.generation.completions import CompletionLog
from localsynth.progress import GenerationProgress


@contextmanager
def finally_flush(completion_log: CompletionLog, progress: GenerationProgress, backend: Backend, loaded):
    finished = False
    try:
        yield
        finished = True
    finally:
        completion_log.close()  # keep every finished request, whatever stopped us
        progress.close(final_line=finished)
        if loaded():
            backend.close()


@contextmanager
def stop_on_sigterm():
    """SIGTERM (SLURM preemption, `scancel`, a time limit) stops the shard like Ctrl-C: the
    finished requests are flushed to the log and a rerun resumes from there."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

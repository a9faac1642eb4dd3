"""Progress: a rich bar on a terminal, plain periodic log lines elsewhere (SLURM logs)."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


def log(message: str) -> None:
    """One line on stderr; timestamped when not on a terminal so SLURM logs read well."""
    if console.is_terminal:
        console.print(message, highlight=False)
    else:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", file=sys.stderr, flush=True)


class GenerationProgress:
    """Counts kept rows against the quota, requests and tokens; shows rates and ETA."""

    def __init__(self, total: int, description: str, mode: str = "auto", log_every_s: float = 30.0):
        if mode == "auto":
            mode = "bar" if console.is_terminal else "log"
        self.mode = mode
        self.total = total
        self.description = description
        self.log_every_s = log_every_s
        self.kept = self.requests = self.tokens = 0
        self.start = self.last_log = time.monotonic()
        self.bar = None
        if mode == "bar":
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task_id = self.bar.add_task(description, total=total, rates="")
            self.bar.start()

    def rates(self) -> tuple[float, float]:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return self.requests / elapsed, self.tokens / elapsed

    def update(self, kept: int = 0, requests: int = 0, tokens: int = 0) -> None:
        self.kept += kept
        self.requests += requests
        self.tokens += tokens
        samples_s, tokens_s = self.rates()
        if self.bar is not None:
            self.bar.update(
                self.task_id, completed=min(self.kept, self.total), rates=f"{samples_s:.1f} samples/s {tokens_s:.0f} tok/s"
            )
        elif self.mode == "log" and time.monotonic() - self.last_log >= self.log_every_s:
            self.last_log = time.monotonic()
            self.log_line()

    def log_line(self) -> None:
        samples_s, tokens_s = self.rates()
        remaining = max(self.total - self.kept, 0)
        kept_s = self.kept / max(time.monotonic() - self.start, 1e-9)
        eta = f"{remaining / kept_s:.0f}s" if kept_s > 0 else "?"
        log(
            f"{self.description}: kept {self.kept}/{self.total}, {self.requests} requests, "
            f"{samples_s:.1f} samples/s, {tokens_s:.0f} tokens/s, ETA {eta}"
        )

    def close(self, final_line: bool = True) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.mode == "log" and final_line:
            self.log_line()


class StepProgress:
    """Training progress: steps, samples/s, loss and ETA; silent on all but the main process."""

    def __init__(self, total_steps: int, description: str, mode: str = "auto", log_every_s: float = 30.0, enabled: bool = True):
        if mode == "auto":
            mode = "bar" if console.is_terminal else "log"
        self.mode = mode if enabled else "off"
        self.total = total_steps
        self.description = description
        self.log_every_s = log_every_s
        self.step = self.samples = 0
        self.loss = float("nan")
        self.start = self.last_log = time.monotonic()
        self.bar = None
        if self.mode == "bar":
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=console,
            )
            self.task_id = self.bar.add_task(description, total=total_steps, info="")
            self.bar.start()

    def update(self, step: int, samples: int, loss: float) -> None:
        self.step, self.loss = step, loss
        self.samples += samples
        rate = self.samples / max(time.monotonic() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.update(self.task_id, completed=step, info=f"loss {loss:.4f} {rate:.1f} samples/s")
        elif self.mode == "log" and time.monotonic() - self.last_log >= self.log_every_s:
            self.last_log = time.monotonic()
            self.log_line()

    def log_line(self) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        per_step = elapsed / max(self.step, 1)
        eta = per_step * max(self.total - self.step, 0)
        log(
            f"{self.description}: step {self.step}/{self.total}, loss {self.loss:.4f}, "
            f"{self.samples / elapsed:.1f} samples/s, ETA {eta:.0f}s"
        )

    def close(self, final_line: bool = True) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.mode == "log" and final_line:
            self.log_line()

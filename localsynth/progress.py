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


class Reporter:
    """A rich bar on a terminal, a log line every `log_every_s` seconds elsewhere, or nothing
    (mode "off"); subclasses count their own work and say it in `log_line`."""

    def __init__(self, total: int, description: str, mode: str = "auto", log_every_s: float = 30.0):
        self.mode = ("bar" if console.is_terminal else "log") if mode == "auto" else mode
        self.total, self.description, self.log_every_s = total, description, log_every_s
        self.start = self.last_log = time.monotonic()
        self.bar = None
        if self.mode == "bar":
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
            )
            self.task_id = self.bar.add_task(description, total=total, info="")
            self.bar.start()

    def elapsed(self) -> float:
        return max(time.monotonic() - self.start, 1e-9)

    def show(self, completed: int, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task_id, completed=completed, info=info)
        elif self.mode == "log" and time.monotonic() - self.last_log >= self.log_every_s:
            self.last_log = time.monotonic()
            self.log_line()

    def log_line(self) -> None:
        raise NotImplementedError

    def close(self, final_line: bool = True) -> None:
        if self.bar is not None:
            self.bar.stop()
        elif self.mode == "log" and final_line:
            self.log_line()


class GenerationProgress(Reporter):
    """Counts kept rows against the quota, requests and tokens; shows rates and ETA."""

    def __init__(self, total: int, description: str, mode: str = "auto", log_every_s: float = 30.0):
        super().__init__(total, description, mode, log_every_s)
        self.kept = self.requests = self.tokens = 0

    def rates(self) -> tuple[float, float]:
        return self.requests / self.elapsed(), self.tokens / self.elapsed()

    def update(self, kept: int = 0, requests: int = 0, tokens: int = 0) -> None:
        self.kept += kept
        self.requests += requests
        self.tokens += tokens
        samples_s, tokens_s = self.rates()
        self.show(min(self.kept, self.total), f"{samples_s:.1f} samples/s {tokens_s:.0f} tok/s")

    def log_line(self) -> None:
        samples_s, tokens_s = self.rates()
        remaining = max(self.total - self.kept, 0)
        kept_s = self.kept / self.elapsed()
        eta = f"{remaining / kept_s:.0f}s" if kept_s > 0 else "?"
        log(
            f"{self.description}: kept {self.kept}/{self.total}, {self.requests} requests, "
            f"{samples_s:.1f} samples/s, {tokens_s:.0f} tokens/s, ETA {eta}"
        )


class StepProgress(Reporter):
    """Training progress: steps, samples/s, loss and ETA; silent on all but the main process."""

    def __init__(self, total_steps: int, description: str, mode: str = "auto", log_every_s: float = 30.0, enabled: bool = True):
        super().__init__(total_steps, description, mode if enabled else "off", log_every_s)
        self.step = self.samples = 0
        self.loss = float("nan")

    def update(self, step: int, samples: int, loss: float) -> None:
        self.step, self.loss = step, loss
        self.samples += samples
        self.show(step, f"loss {loss:.4f} {self.samples / self.elapsed():.1f} samples/s")

    def log_line(self) -> None:
        eta = self.elapsed() / max(self.step, 1) * max(self.total - self.step, 0)
        log(
            f"{self.description}: step {self.step}/{self.total}, loss {self.loss:.4f}, "
            f"{self.samples / self.elapsed():.1f} samples/s, ETA {eta:.0f}s"
        )


class CountProgress(Reporter):
    """Items done of a known total (texts predicted, rows judged), with their rate."""

    def __init__(self, total: int, description: str, mode: str = "auto", log_every_s: float = 30.0):
        super().__init__(total, description, mode, log_every_s)
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        self.show(self.done, f"{self.done / self.elapsed():.1f}/s")

    def log_line(self) -> None:
        log(f"{self.description}: {self.done}/{self.total}, {self.done / self.elapsed():.1f}/s")

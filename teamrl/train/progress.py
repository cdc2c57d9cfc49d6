"""Training progress: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import datetime
import math
import os
import sys


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    return str(datetime.timedelta(seconds=int(round(seconds))))


def _fmt_return(value) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return "?"


class ProgressReporter:
    """Reports training progress; use as a context manager.

    On a terminal this shows a ``rich`` progress bar; otherwise (logs, CI,
    pipes) it prints one line per :meth:`update`, since a redrawn bar would
    fill log files with control codes. ``enabled=False`` silences updates;
    :meth:`log` messages are still printed.
    """

    def __init__(self, total_steps: int, start_steps: int = 0, enabled: bool = True, console=None):
        self.total_steps = int(total_steps)
        self.start_steps = int(start_steps)
        self.enabled = enabled
        self.console = console
        self._progress = None
        self._task = None
        if console is not None:
            self.is_terminal = bool(getattr(console, "is_terminal", False))
        else:
            self.is_terminal = sys.stdout.isatty()

    def __enter__(self) -> "ProgressReporter":
        if self.enabled and self.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("[bold]teamrl"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[sps]}"),
                TextColumn("{task.fields[ret]}"),
                # ETA from the trainer's own steps/s rather than rich's
                # sampled speed, which is blank for the first updates.
                TextColumn("{task.fields[eta]}"),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.total_steps, completed=self.start_steps,
                sps="sps ?", ret="return ?", eta="eta ?")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def update(self, env_steps: int, metrics: dict) -> None:
        if not self.enabled:
            return
        env_steps = int(env_steps)
        sps = float(metrics.get("steps_per_s", math.nan))
        ret = _fmt_return(metrics.get("return_mean"))
        remaining = max(self.total_steps - env_steps, 0)
        eta = _fmt_eta(remaining / sps) if sps > 0 else "?"
        sps_text = f"{sps:,.0f}" if math.isfinite(sps) else "?"
        if self._progress is not None:
            self._progress.update(self._task, completed=env_steps, sps=f"sps {sps_text}",
                                  ret=f"return {ret}", eta=f"eta {eta}")
            return
        pct = 100.0 * env_steps / self.total_steps if self.total_steps > 0 else 100.0
        self._print(
            f"[teamrl] steps {env_steps:,}/{self.total_steps:,} ({pct:.1f}%)  "
            f"sps {sps_text}  return {ret}  eta {eta}")

    def log(self, message: str) -> None:
        """Print a line; above the bar when one is showing."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            self._print(message)

    def _print(self, line: str) -> None:
        # Looked up per call (not cached) so redirected/captured stdout works.
        out = getattr(self.console, "file", None) if self.console is not None else None
        try:
            print(line, file=out if out is not None else sys.stdout, flush=True)
        except BrokenPipeError:
            # The reader went away (`teamrl train ... | head -3`): training goes on, silently;
            # stdout points at /dev/null so later prints and the final flush cannot fail.
            self.enabled = False
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass

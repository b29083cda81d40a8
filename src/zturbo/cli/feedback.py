"""What ``zturbo generate`` shows on stderr while it works.

On a terminal: a rich spinner while the model loads, then per image a spinner, the stage
(encoding, denoising, decoding) and a step bar, all transient. Without a terminal (a log,
a pipe, CI): plain text, one line per stage group and no blank lines, e.g.
``zturbo: loading demo ...`` / ``zturbo: loading demo: done in 1.42s`` and ``zturbo: seed 42: encoding, denoising 1 2 ... 8,
decoding, done 0.61s``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class PlainTicker:
    """One image's progress as one growing line of plain text.

    Another writer's text (a warning) ends the line first (``break_line``); the progress
    then goes on in a new line that repeats the label.
    """

    def __init__(self, out: TextIO, label: str) -> None:
        self.out, self.label, self.stage, self.started = out, label, "", time.perf_counter()
        self.mid_line = self.broken = False
        self._write(f"zturbo: {label}: ")

    def _write(self, text: str) -> None:
        if self.broken:
            text, self.broken = f"zturbo: {self.label}: ... {text.removeprefix(', ')}", False
        self.out.write(text)
        self.out.flush()
        self.mid_line = not text.endswith("\n")

    def break_line(self) -> None:
        """End the progress line so that what is written next starts a line of its own."""
        if self.mid_line:
            self.out.write("\n")
            self.mid_line, self.broken = False, True

    def set_stage(self, stage: str) -> None:
        if stage != self.stage:
            self._write(f"{', ' if self.stage else ''}{stage}")
            self.stage = stage

    def step(self, done: int, total: int) -> None:
        self.set_stage("denoising")
        self._write(f" {done}")
        if done >= total:
            self.set_stage("decoding")

    def close(self, outcome: str = "done") -> None:
        self._write(f"{', ' if self.stage else ''}{outcome} "
                    f"{time.perf_counter() - self.started:.2f}s\n")


class LineBreakingStream:
    """``sys.stderr`` while a plain progress line is open: whoever else writes (a logged
    warning, a library's message) ends that line first, so their text is a line of its own."""

    def __init__(self, real: TextIO, ticker: PlainTicker) -> None:
        self.real, self.ticker = real, ticker

    def write(self, text: str) -> int:
        if text:
            self.ticker.break_line()
        return self.real.write(text)

    def __getattr__(self, name: str):
        return getattr(self.real, name)


@contextmanager
def others_on_their_own_lines(ticker: PlainTicker) -> Iterator[None]:
    """Route ``sys.stderr`` through ``LineBreakingStream`` while ``ticker`` is shown there."""
    real = sys.stderr
    if ticker.out is not real:
        yield
        return
    sys.stderr = LineBreakingStream(real, ticker)
    try:
        yield
    finally:
        sys.stderr = real


class RichTicker:
    """One image's progress as a transient rich spinner + stage + bar."""

    def __init__(self, progress, label: str, total: int) -> None:
        self.progress, self.label, self.stage = progress, label, ""
        self.task = progress.add_task(f"{label}: encoding", total=total)

    def set_stage(self, stage: str) -> None:
        self.progress.update(self.task, description=f"{self.label}: {stage}")

    def step(self, done: int, total: int) -> None:
        stage = "decoding" if done >= total else "denoising"
        self.progress.update(self.task, completed=done, total=total,
                             description=f"{self.label}: {stage}")

    def close(self) -> None:
        pass


class Feedback:
    """Spinners and bars on a terminal, plain single lines otherwise (stderr either way)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.terminal = self.out.isatty()

    def _console(self):
        from rich.console import Console  # rich: loaded when something is shown

        return Console(file=self.out)

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A spinner (or one plain line with the time taken) around a slow step."""
        if self.terminal:
            with self._console().status(text):
                yield
            return
        started = time.perf_counter()
        print(f"zturbo: {text} ...", file=self.out, flush=True)  # whole lines: others print too
        yield
        print(f"zturbo: {text}: done in {time.perf_counter() - started:.2f}s", file=self.out,
              flush=True)

    @contextmanager
    def image(self, label: str, total: int, first_stage: str = "encoding"):
        """Progress of one image: ``ticker.step(done, total)``, ``ticker.set_stage(name)``."""
        if not self.terminal:
            ticker = PlainTicker(self.out, label)
            ticker.set_stage(first_stage)
            with others_on_their_own_lines(ticker):
                try:
                    yield ticker
                except BaseException:
                    ticker.close("stopped")  # the reason follows on its own line
                    raise
                ticker.close()
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), transient=True,
                      console=self._console()) as progress:
            ticker = RichTicker(progress, label, total)
            ticker.set_stage(first_stage)
            yield ticker


def progress():
    """The CLI's progress bar (on stderr), for ``zturbo sweep``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E501 - lazy: keeps CLI start fast

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=True,
                    console=__import__("rich.console").console.Console(stderr=True))

"""Progress of a run: a tqdm bar on a terminal or in a notebook (tqdm.auto), plain periodic lines in logs.

`ray job logs`, CI and files get one line every `interval` seconds
(points done/total, points/s, ETA) instead of a bar's carriage returns.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm


def in_notebook() -> bool:
    """Whether this process is a running Jupyter kernel (not merely one that imported ipykernel, as a test does)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def say(line: str, stream=None) -> None:
    """A log line (standard output unless `stream`); once its reader has gone (`landscape-ray run … | head -1`), the
    stream is pointed at /dev/null and the run goes on quietly (its results go to the store) instead of dying."""
    stream = stream or sys.stdout
    try:
        print(line, file=stream, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, total: int, interval: float = 10.0, stream=None, start: float | None = None):
        """`start` (perf_counter): when the counted work began, if before now (the rate counts from there)."""
        self.total, self.done, self.interval = total, 0, interval
        self.stream = stream or sys.stdout
        self.last = time.perf_counter()
        self.start = self.last if start is None else start
        live = self.stream.isatty() or in_notebook()  # a terminal, or a Jupyter cell (a widget bar)
        self.bar = tqdm(total=total, unit="pt", file=self.stream, dynamic_ncols=True) if live else None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def grow(self, n: int) -> None:
        """`n` more points to do (an adaptive grid's pass, known once chosen)."""
        self.total += n
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = fmt_seconds((self.total - self.done) / rate) if rate > 0 else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"[landscape-ray] {self.done}/{self.total} points ({pct:.1f}%), {rate:.1f} points/s, ETA {eta}"

    def tick(self) -> bool:
        """Print a line if `interval` has passed (logs only); True when it has."""
        now = time.perf_counter()
        if now - self.last < self.interval:
            return False
        self.last = now
        if self.bar is None:
            say(self.line(), self.stream)
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            say(self.line(), self.stream)

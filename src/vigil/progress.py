"""Progress of long offline jobs (train, predict, evaluate, the gate, backtests): a tqdm bar on a terminal, and
off a terminal (CI, a container's log, ``nohup``) one log line every ``interval_s`` seconds and one at the end,
so a 10-minute job never sits silent.

>>> import logging, io
>>> stream = io.StringIO(); h = logging.StreamHandler(stream)
>>> logging.getLogger("vigil.progress").addHandler(h); logging.getLogger("vigil.progress").setLevel("INFO")
>>> with progress(100, "featurize", unit="row", interval_s=0.0, tty=False) as bar:
...     bar.update(40); bar.update(60)
>>> lines = stream.getvalue().splitlines()
>>> lines[0].startswith("featurize: 40/100 row (40 %)"), lines[-1].startswith("featurize: done, 100 row in")
(True, True)
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["progress", "Progress", "iterate"]

log = logging.getLogger("vigil.progress")


def _fmt(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:g}"


class Progress:
    """Counts work done; off a terminal logs ``desc: done/total unit (pct), elapsed, ~left`` periodically."""

    def __init__(self, total: int | None, desc: str, unit: str, interval_s: float, bar: Any = None) -> None:
        self.total, self.desc, self.unit, self.interval_s, self.bar = total, desc, unit, interval_s, bar
        self.n = 0
        self.t0 = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        if self.total:
            pct = 100.0 * self.n / self.total
            left = elapsed * (self.total - self.n) / self.n if self.n else float("nan")
            return (f"{self.desc}: {_fmt(self.n)}/{_fmt(self.total)} {self.unit} ({pct:.0f} %), {elapsed:.0f} s elapsed"
                    + (f", ~{left:.0f} s left" if self.n else ""))  # fmt: skip
        return f"{self.desc}: {_fmt(self.n)} {self.unit}, {elapsed:.0f} s elapsed"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            log.info("%s: done, %s %s in %.1f s", self.desc, _fmt(self.n), self.unit, time.monotonic() - self.t0)


@contextmanager
def progress(total: int | None, desc: str, *, unit: str = "it", interval_s: float = 10.0,
             tty: bool | None = None) -> Iterator[Progress]:  # fmt: skip
    """A progress counter for ``total`` units (None: unknown). ``tty`` None: whether stderr is a terminal."""
    on_tty = sys.stderr.isatty() if tty is None else tty
    bar = None
    if on_tty:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    p = Progress(total, desc, unit, interval_s, bar)
    try:
        yield p
    finally:
        p.close()


def iterate(items: Iterable[Any], total: int | None, desc: str, *, unit: str = "it") -> Iterator[Any]:
    """``items`` with :func:`progress` counting each one."""
    with progress(total, desc, unit=unit) as bar:
        for item in items:
            yield item
            bar.update(1)

"""Progress of a run, for a person at a terminal or for a log file.

On a terminal, tqdm's bar (redrawn in place).  Anywhere else — stderr redirected to a log file, CI, a Ray worker,
``reweigh compare``'s subprocesses — a bar's carriage-return redraws pile up in the log (a 2k-step run wrote 95 KB
of them), so ``Progress`` writes one plain line every ``every`` seconds instead, and one at the end:

    [run] 12000/100000 env steps (12%) | 41.3 env steps/s | 4m50s elapsed, ~35m30s left | upd_s=3.4 eval=215
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

#: seconds between two progress lines when the stream is not a terminal (``REWEIGH_PROGRESS_EVERY`` overrides).
PROGRESS_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _every() -> float:
    raw = os.environ.get("REWEIGH_PROGRESS_EVERY")
    if raw is None:
        return PROGRESS_EVERY_S
    try:
        return max(float(raw), 0.0)
    except ValueError:
        raise ValueError(f"REWEIGH_PROGRESS_EVERY: expected seconds (a number), got {raw!r}") from None


class Progress:
    """A progress display of ``total`` units on ``stream`` (default stderr, where tqdm writes).

    Args:
        total: the units to reach (env steps, tasks).
        initial: units already done (a resumed run).
        unit: the unit's name, singular.
        label: the line's prefix (plain lines only).
        stream: where to write; a terminal gets tqdm's bar, anything else plain lines.
        every: seconds between plain lines (default ``PROGRESS_EVERY_S``, or ``$REWEIGH_PROGRESS_EVERY``).
        enabled: ``False`` writes nothing except ``write`` messages.
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        unit: str = "env step",
        label: str = "run",
        stream: TextIO | None = None,
        every: float | None = None,
        enabled: bool = True,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.n, self.initial, self.unit, self.label = total, initial, initial, unit, label
        self.every = _every() if every is None else every
        self.enabled = enabled
        self.postfix: dict[str, Any] = {}
        isatty = getattr(self.stream, "isatty", None)
        self.bar: Any = None
        if enabled and isatty is not None and isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, file=self.stream)
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        """``n`` more units done; a plain line if ``every`` seconds passed since the last one."""
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self._line()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (``key=value``), on the bar at once, on the next plain line otherwise."""
        self.postfix = values
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def write(self, message: str) -> None:
        """A message on its own line (above the bar on a terminal), written even when not ``enabled``."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar, or write the last plain line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled:
            self._line()
            self.enabled = False

    def _line(self) -> None:
        now = time.monotonic()
        self.last = now
        elapsed = now - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        parts = [f"[{self.label}] {self.n}/{self.total} {self.unit}s ({100 * self.n / max(self.total, 1):.0f}%)"]
        parts.append(f"{rate:.1f} {self.unit}s/s")
        left = f", ~{_duration((self.total - self.n) / rate)} left" if rate > 0 and self.n < self.total else ""
        parts.append(f"{_duration(elapsed)} elapsed{left}")
        if self.postfix:
            parts.append(" ".join(f"{k}={v}" for k, v in self.postfix.items()))
        print(" | ".join(parts), file=self.stream, flush=True)

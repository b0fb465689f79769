"""What an L3 tier logs while its database is unreachable: a few lines, not one per call.

    first failure ──► WARNING "PostgreSQL at ... unavailable: <error>"
    failures      ──► counted; at most one WARNING "still unavailable" per interval
    first success ──► INFO "reachable again after Ns; M calls failed"

Every failed call still raises its typed error (and the router counts it); only the log is
summarised, so an outage of any length costs a handful of lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["OutageLog"]


class OutageLog:
    __slots__ = ("_clock", "_failed", "_interval", "_last_summary", "_log", "_since", "_what")

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._what = what
        self._interval = interval
        self._clock = clock
        self._since: float | None = None  # when the outage began (None: no outage)
        self._last_summary = 0.0
        self._failed = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> None:
        """A call failed because the database could not be reached (or did not answer)."""
        now = self._clock()
        self._failed += 1
        if self._since is None:
            self._since = self._last_summary = now
            self._log.warning("%s unavailable: %s", self._what, exc)
        elif now - self._last_summary >= self._interval:
            self._last_summary = now
            self._log.warning(
                "%s still unavailable after %.1fs: %d calls failed so far; last error: %s",
                self._what,
                now - self._since,
                self._failed,
                exc,
            )

    def succeeded(self) -> None:
        """A call got an answer: ends an outage (one line)."""
        if self._since is None:
            return
        self._log.info(
            "%s reachable again after %.1fs; %d calls failed meanwhile",
            self._what,
            self._clock() - self._since,
            self._failed,
        )
        self._since = None
        self._failed = 0

"""One logging set-up for every ktcluster process: time, level, role, message on each line."""

from __future__ import annotations

import logging


def configure_logging(role: str, stream) -> None:
    """INFO and above to `stream`, as `2026-12-01 10:00:00,123 WARNING chief message`.

    A busy chief logs hundreds of lines a second, under its lock: as the logging HOWTO advises,
    what the format never shows is not collected (the caller's file and line, a stack walk per
    record; thread and process fields)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {role} %(message)s", stream=stream,
                        force=True)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


def last_line(message: str | None, limit: int = 500) -> str:
    """The last non-empty line of `message` (a traceback's `ValueError: ...`), its whitespace made
    single spaces, at most `limit` characters (cut ones end in "..."); "" for no text."""
    lines = [line for line in (message or "").splitlines() if line.strip()]
    text = " ".join(lines[-1].split()) if lines else ""
    return text if len(text) <= limit else text[:limit - 3] + "..."


class OncePerWindow:
    """Says whether a line keyed by `key` may be logged now: at most once per key per `window`
    seconds (a flood of the same refusal, or of the same outage, costs one line per window).

    `allow(key)` returns 0 when the line must be dropped, else 1 + the number of lines dropped for
    that key since it was last allowed (so the caller can say "... (and N more)"). At most
    `max_keys` keys are remembered: the oldest is forgotten first (a forgotten key is allowed
    again). `clock` is injectable (default time.monotonic). Thread-safe."""

    def __init__(self, window: float, clock=None, max_keys: int = 10_000):
        import threading
        import time

        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, not {window!r}")
        self.window, self.clock, self.max_keys = window, clock or time.monotonic, max_keys
        self._lock = threading.Lock()
        self._last: dict = {}  # key -> [time it was last allowed, lines dropped since]

    def allow(self, key) -> int:
        with self._lock:
            now = self.clock()
            entry = self._last.get(key)
            if entry is not None and now - entry[0] < self.window:
                entry[1] += 1
                return 0
            dropped = entry[1] if entry is not None else 0
            self._last.pop(key, None)
            self._last[key] = [now, 0]  # re-inserted: the dict stays ordered oldest first
            while len(self._last) > self.max_keys:
                del self._last[next(iter(self._last))]
            return 1 + dropped

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

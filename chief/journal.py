"""Append-only record of trial attempts (who ran what, when, how it ended).

O(1) work per event, in the kernel before the caller replies (fsync'd too with
KTC_FSYNC=1); replayed on start, so a restarted chief
(and `python -m chief status`, which needs no TensorFlow) knows every attempt.
"""

from __future__ import annotations

import json
import os
import time

JOURNAL = "ktcluster-runs.jsonl"


class RunJournal:
    """Events: start (trial, worker) and end (trial, status, seconds, message, used)."""

    def __init__(self, project_dir: str, fsync: bool = False):
        self.path, self.fsync = os.path.join(project_dir, JOURNAL), fsync
        self.runs = self.replay(self.path)
        self._file = open(self.path, "a")

    @staticmethod
    def replay(path: str) -> dict[str, dict]:
        """trial id -> latest attempt (worker, started, seconds, status, attempts, message, used)."""
        runs: dict[str, dict] = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        RunJournal._apply(runs, json.loads(line))
                    except ValueError:  # a torn last line from a crash: ignore it
                        continue
        return runs

    @staticmethod
    def _apply(runs, event):
        """Fold one event in; `ends` counts ended attempts, `ended_at` orders results."""
        run = runs.setdefault(event["trial"], {"attempts": 0, "ends": 0, "message": ""})
        if event["event"] == "start":
            run.update(worker=event["worker"], started=event["t"], seconds=None, status="RUNNING")
            run["attempts"] += 1
        else:
            run.update(seconds=event.get("seconds"), status=event["status"], ended_at=event["t"])
            run["ends"] += 1
            if event.get("used") is not None:
                run["used"] = event["used"]
            if event.get("message"):
                run["message"] = event["message"]

    def record(self, **event):
        event["t"] = time.time()
        self._apply(self.runs, event)
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self):
        self._file.close()

"""Progress lines, the final report and the results files."""

from __future__ import annotations

import json
import logging
import math
import threading
import time

from shared import results

log = logging.getLogger("ktcluster.progress")


def configure_logging(stream) -> None:
    """The chief's log: a line per trial start and end, progress lines, warnings.

    A busy chief logs hundreds of lines a second, under its lock. The logging HOWTO's own
    optimisations drop what its format never shows: the caller's file and line (a stack walk per
    record) and the thread and process fields.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chief %(message)s", stream=stream)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False


class LineBudget:
    """A token bucket for the per-trial start and end lines: at most `rate` a second on average,
    `burst` at once; lines over it are counted (`take_skipped`), and the next progress line says how
    many. A chief serving hundreds of trials a second spent ~10% of its time on lines nobody can
    read (benchmarks/RESULTS.md); real trials (seconds to hours) stay far below the budget. Every
    trial is still in the journal, `python -m chief status` and trials.csv. Not thread-safe: the
    coordinator calls it under its lock."""

    def __init__(self, rate: float = 50.0, burst: int = 100, clock=time.monotonic):
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at, self._skipped = float(burst), clock(), 0

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self._skipped += 1
        return False

    def take_skipped(self) -> int:
        """Lines skipped since the last call."""
        skipped, self._skipped = self._skipped, 0
        return skipped


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s")


def eta(total: int, completed: int, failed: int, running: int, mean_seconds: float | None) -> float | None:
    """Remaining trials / running workers (rounded up) x mean trial time."""
    remaining = max(total - completed - failed, 0)
    if not mean_seconds or not remaining:
        return None
    return math.ceil(remaining / max(running, 1)) * mean_seconds


def summary(snap: dict) -> dict:
    """Counts, best and ETA from a full snapshot (results, status, the final report)."""
    statuses = [t.status for t in snap["trials"]]
    completed, failed = statuses.count("COMPLETED"), statuses.count("FAILED")
    total = snap["max_trials"] or len(statuses)
    durations = [r["seconds"] for r in snap["runs"].values() if r.get("seconds")]
    mean = sum(durations) / len(durations) if durations else None
    best = snap["best"]
    return {
        "completed": completed, "failed": failed, "running": snap["running"], "total": total,
        "queued": len(snap.get("queued", ())), "objective": snap["objective"].name,
        "eta": eta(total, completed, failed, len(snap["running"]), mean),
        "best": None if best is None else (best.trial_id, best.score),
    }


def summary_record(snap: dict) -> dict:
    """JSON-able counts for the finished marker."""
    s = summary(snap)
    return {"completed": s["completed"], "failed": s["failed"], "total": len(snap["trials"]),
            "best_trial": s["best"][0] if s["best"] else None}


def line(s: dict) -> str:
    """One progress line from a summary (`summary()` or the coordinator's O(1) `progress()`)."""
    running = ", ".join(f"{w}:{t}" for w, t in sorted(s["running"].items())) or "none"
    best = "none yet" if s["best"] is None else f"{s['best'][1]:.4f} (trial {s['best'][0]})"
    queued = f", {s['queued']} queued for retry" if s["queued"] else ""
    skipped = (f"; {s['skipped']} trial start/end lines not shown (over {s['budget']:g} a second, every trial "
               "is in the journal)") if s.get("skipped") else ""
    return (f"progress: {s['completed'] + s['failed']}/{s['total']} done ({s['failed']} failed{queued}), "
            f"running [{running}], best {s['objective']} {best}, ETA {_duration(s['eta'])}{skipped}")


class ProgressLog:
    """The coordinator's `on_event`: a progress line at most every `interval` seconds, one when
    the search is over, and the latest state `interval` after a skipped event (nothing is left
    unsaid for long). A line per event cost the chief as much as serving the trial itself at
    hundreds of trials per second (benchmarks/RESULTS.md). A line the same as the one before is not
    said again."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._lock = threading.Lock()
        self._last = -math.inf
        self._timer: threading.Timer | None = None
        self._said = ""

    def __call__(self, coordinator) -> None:
        with self._lock:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0 and not coordinator.finished.is_set():
                if self._timer is None:
                    self._timer = threading.Timer(wait, self._emit, args=(coordinator,))
                    self._timer.daemon = True
                    self._timer.start()
                return
        self._emit(coordinator)

    def _emit(self, coordinator) -> None:
        """Say the state, unless it is the line just said (workers told STOPPED after the end)."""
        text = line(coordinator.progress())
        with self._lock:
            self._last, self._timer = time.monotonic(), None
            if text == self._said:
                return
            self._said = text
        log.info(text)


def write_results(snap: dict, results_dir: str) -> dict:
    """trials.csv + best_hyperparameters.json; returns the best record."""
    rows = results.trials_rows(snap["trials"], snap["runs"], snap["space"])
    best = snap["best"]
    best_record = {
        "objective": snap["objective"].name,
        "direction": snap["objective"].direction,
        "trial_id": best.trial_id if best else None,
        "score": best.score if best else None,
        "worker": snap["runs"].get(best.trial_id, {}).get("worker") if best else None,
        "hyperparameters": dict(best.hyperparameters.values) if best else {},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results.write(results_dir, rows, snap["space"], best_record)
    return best_record


def final_report(snap: dict, results_dir: str) -> str:
    best = write_results(snap, results_dir)
    s = summary(snap)
    failed = [f"{t.trial_id} ({snap['runs'].get(t.trial_id, {}).get('message') or 'no message'})"
              for t in snap["trials"] if t.status == "FAILED"]
    return (f"search {'STOPPED' if snap.get('fatal') else 'finished'}: {s['completed']} completed, "
            f"{s['failed']} failed{': ' + '; '.join(failed) if failed else ''} of {len(snap['trials'])}; "
            f"best {best['objective']}={best['score']} (trial {best['trial_id']}) "
            f"{json.dumps(best['hyperparameters'], sort_keys=True)}; results in {results_dir}")

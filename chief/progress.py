"""Progress lines, the final report and the results files."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time

from shared import results

log = logging.getLogger("ktcluster.progress")


class LineBudget:
    """A token bucket for the per-trial start and COMPLETED lines: at most `rate` a second on
    average, `burst` at once; lines over it are counted (`take_skipped`) and the next progress line
    says how many (every trial is still in the journal, `python -m chief status` and trials.csv).
    Failures and retries are always logged, outside the budget. Not thread-safe: the coordinator
    calls it under its lock."""

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


def _short(seconds: float) -> str:
    """`25s`, `1m05s`, `1h02m03s`: how long a worker has been silent."""
    return f"{int(seconds)}s" if seconds < 60 else _duration(seconds)


def eta(remaining: int, workers: int, mean_seconds: float | None) -> float | None:
    """The remaining trials' time (running ones included, as whole trials) shared by the workers
    that can run them: `remaining x mean / min(workers, remaining)`; None with nothing to go by."""
    if not mean_seconds or remaining <= 0:
        return None
    return remaining * mean_seconds / max(min(workers, remaining), 1)


class Eta:
    """An ETA that counts down between trial ends instead of following the count of trials
    running at that instant (which dips at every end, before the worker asks again, and made
    the ETA jump back and forth).

    It is estimated afresh (`eta()`, from the mean duration of every ended attempt and the number
    of workers holding a lease) only when one of those inputs changed; in between it falls with
    the clock, to 0 at the least. A fresh estimate may fall by any amount (more workers, shorter
    trials) but rises by at most one mean trial duration over the counted-down one. Not
    thread-safe: the coordinator's lock."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._basis: tuple | None = None  # (remaining, workers, mean) of the last estimate
        self._value = self._at = 0.0

    def __call__(self, remaining: int, workers: int, mean_seconds: float | None) -> float | None:
        now, fresh = self._clock(), eta(remaining, workers, mean_seconds)
        if fresh is None:
            self._basis = None
            return None
        counted_down = max(self._value - (now - self._at), 0.0)
        basis = (remaining, workers, mean_seconds)
        if basis == self._basis:
            return counted_down
        self._value = fresh if self._basis is None else min(fresh, counted_down + mean_seconds)
        self._basis, self._at = basis, now
        return self._value


@dataclasses.dataclass(frozen=True)
class ObjectiveInfo:
    name: str
    direction: str | None  # "min" or "max", as the oracle has it


@dataclasses.dataclass
class Snapshot:
    """The whole search at one moment: the chief's (Coordinator.snapshot) or the files' (status)."""

    trials: list  # KerasTuner Trials (or records with trial_id, status, score, hyperparameters.values)
    runs: dict  # trial id -> chief.trials.TrialRun
    running: dict[str, str]  # worker -> trial id
    queued: list[str]
    max_trials: int | None
    objective: ObjectiveInfo
    best: object | None  # the best COMPLETED trial
    space: list[str]  # hyperparameter names
    fatal: str | None = None
    finished: bool = False  # the search is over (status: the finished marker is there)


@dataclasses.dataclass(frozen=True)
class Summary:
    """What a progress line says."""

    completed: int
    failed: int
    running: dict[str, str]  # worker -> trial id
    total: int
    queued: int
    objective: str
    best: tuple | None  # (trial id, score)
    eta: float | None
    skipped: int = 0  # per-trial lines left out since the last progress line
    budget: float = 0.0
    finished: bool = False  # said in place of the ETA
    silent: dict[str, float] = dataclasses.field(default_factory=dict)  # running worker -> seconds unheard


class Tally:
    """Counts, run time and best result, kept up to date in O(1) per ended attempt (the chief
    logs progress at hundreds of trials a second), and the ETA (`Eta`, on `clock`). Not thread-safe:
    the coordinator's lock."""

    def __init__(self, direction: str | None, clock=time.monotonic):
        self.direction, self.eta = direction, Eta(clock)
        self.completed = self.failed = self.timed = 0
        self.seconds = 0.0
        self.best: tuple | None = None

    @classmethod
    def of(cls, oracle, book, clock=time.monotonic) -> "Tally":
        tally = cls(oracle.objective.direction, clock)
        for trial in oracle.trials.values():
            tally._count(trial)
        for run in book.runs.values():
            tally._time(run.seconds)
        return tally

    def _time(self, seconds: float | None) -> None:
        if seconds:
            self.seconds += seconds
            self.timed += 1

    def _count(self, trial) -> None:
        if trial.status == "FAILED":
            self.failed += 1
        elif trial.status == "COMPLETED":
            self.completed += 1
            if trial.score is not None and trial.score == trial.score:
                better = max if self.direction == "max" else min
                if self.best is None or better(trial.score, self.best[1]) != self.best[1]:
                    self.best = (trial.trial_id, trial.score)

    def ended(self, trial, run) -> None:
        """An attempt of `trial` ended (`run`: its TrialRun after the transition)."""
        self._time(run.seconds)
        if run.phase.final:
            self._count(trial)

    def summary(self, total: int, running: dict, queued: int, objective: str, skipped: int = 0,
                budget: float = 0.0, presence=None) -> Summary:
        """`presence`: the leases' `Presence` (how many workers, who is silent); None: only the
        workers running a trial now are counted and none is marked silent."""
        mean = self.seconds / self.timed if self.timed else None
        workers = presence.workers if presence is not None else len(running)
        silent = {w: s for w, s in presence.silent.items() if w in running} if presence is not None else {}
        return Summary(self.completed, self.failed, running, total, queued, objective, self.best,
                       self.eta(total - self.completed - self.failed, workers, mean), skipped, budget, silent=silent)


def summary(snap: Snapshot) -> Summary:
    """Counts, best and ETA from a full snapshot (results, status, the final report)."""
    statuses = [t.status for t in snap.trials]
    completed, failed = statuses.count("COMPLETED"), statuses.count("FAILED")
    total = snap.max_trials or len(statuses)
    durations = [r.seconds for r in snap.runs.values() if r.seconds]
    mean = sum(durations) / len(durations) if durations else None
    best = snap.best
    return Summary(completed, failed, snap.running, total, len(snap.queued), snap.objective.name,
                   None if best is None else (best.trial_id, best.score),
                   eta(total - completed - failed, len(snap.running), mean), finished=snap.finished)


def summary_record(snap: Snapshot) -> dict:
    """JSON-able counts for the finished marker."""
    s = summary(snap)
    return {"completed": s.completed, "failed": s.failed, "total": len(snap.trials),
            "best_trial": s.best[0] if s.best else None}


def line(s: Summary) -> str:
    """One progress line from a summary (`summary()` or the coordinator's O(1) `progress()`); a
    running worker not heard for a while is marked `worker-1:07 silent 25s`."""
    running = ", ".join(f"{w}:{t}" + (f" silent {_short(s.silent[w])}" if w in s.silent else "")
                        for w, t in sorted(s.running.items())) or "none"
    best = "none yet" if s.best is None else f"{s.best[1]:.4f} (trial {s.best[0]})"
    queued = f", {s.queued} queued for retry" if s.queued else ""
    skipped = (f"; {s.skipped} trial start/end lines not shown (over {s.budget:g} a second, every trial "
               "is in the journal)") if s.skipped else ""
    return (f"progress: {s.completed + s.failed}/{s.total} done ({s.failed} failed{queued}), "
            f"running [{running}], best {s.objective} {best}, "
            f"{'search finished' if s.finished else 'ETA ' + _duration(s.eta)}{skipped}")


class ProgressLog:
    """The coordinator's `on_event`: a progress line at most every `interval` seconds, one when
    the search is over, and the latest state `interval` after a skipped event (nothing is left
    unsaid for long). A line that tells nothing new but the time (the ETA counting down, a silence
    growing longer) is not said again, so the coordinator may call it on every lease check: a
    worker falling silent, or heard again, is said at the next check. Thread-safe."""

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
        """Say the state, unless it tells nothing new (workers told STOPPED after the end, a
        lease check while a silence only grows)."""
        summary = coordinator.progress()
        news = line(dataclasses.replace(summary, eta=None, silent=dict.fromkeys(summary.silent, 0)))
        with self._lock:
            self._last, self._timer = time.monotonic(), None
            if news == self._said:
                return
            self._said = news
        log.info(line(summary))


def write_results(snap: Snapshot, results_dir: str) -> dict:
    """trials.csv + best_hyperparameters.json; returns the best record."""
    rows = results.trials_rows(snap.trials, snap.runs, snap.space)
    best = snap.best
    best_record = {
        "objective": snap.objective.name,
        "direction": snap.objective.direction,
        "trial_id": best.trial_id if best else None,
        "score": best.score if best else None,
        "worker": snap.runs[best.trial_id].owner if best and best.trial_id in snap.runs else None,
        # what the best model was built with, as in trials.csv (the oracle's full draw: trial.json)
        "hyperparameters": results.used_values(
            best.hyperparameters.values, snap.runs[best.trial_id].used if best.trial_id in snap.runs else None,
        ) if best else {},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results.write(results_dir, rows, snap.space, best_record)
    return best_record


def final_report(snap: Snapshot, results_dir: str, model_note: str = "") -> str:
    """Write the results; return the final line (`model_note`: what became of best_model.keras)."""
    best = write_results(snap, results_dir)
    s = summary(snap)
    failed = [f"{t.trial_id} ({(snap.runs[t.trial_id].message if t.trial_id in snap.runs else '') or 'no message'})"
              for t in snap.trials if t.status == "FAILED"]
    return (f"search {'STOPPED' if snap.fatal else 'finished'}: {s.completed} completed, "
            f"{s.failed} failed{': ' + '; '.join(failed) if failed else ''} of {len(snap.trials)}; "
            f"best {best['objective']}={best['score']} (trial {best['trial_id']}) "
            f"{json.dumps(results.json_safe(best['hyperparameters']), sort_keys=True)}; results in {results_dir}"
            + (f"; {model_note}" if model_note else ""))

"""Serves one stock KerasTuner oracle to many workers.

The oracle keeps its own algorithm and bookkeeping; this wrapper adds what a
cluster needs around it, in one place: one lock for all calls (released even
when the oracle raises), who ran which trial and for how long (an append-only
journal, so a restarted chief still knows), progress events, and the moment
the search is over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time

from keras_tuner.src.engine import oracle as oracle_module
from keras_tuner.src.engine import trial as trial_module

log = logging.getLogger("ktcluster.chief")

RUNNING = trial_module.TrialStatus.RUNNING
STOPPED = trial_module.TrialStatus.STOPPED
JOURNAL = "ktcluster-runs.jsonl"


class RunJournal:
    """Append-only record of trial attempts: O(1) per event, replayed on start."""

    def __init__(self, project_dir: str):
        self.path = os.path.join(project_dir, JOURNAL)
        self.runs: dict[str, dict] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    try:
                        self._apply(json.loads(line))
                    except ValueError:  # a torn last line from a crash: ignore it
                        continue
        self._file = open(self.path, "a")

    def _apply(self, event):
        run = self.runs.setdefault(event["trial"], {"attempts": 0})
        if event["event"] == "start":
            run.update(worker=event["worker"], started=event["t"], seconds=None)
            run["attempts"] += 1
        else:
            run.update(seconds=event["seconds"], status=event["status"])

    def record(self, **event):
        event["t"] = time.time()
        self._apply(event)
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self):
        self._file.close()


class Coordinator:
    """Thread-safe facade over an oracle; `finished` is set when the search is over."""

    def __init__(self, oracle, on_event=lambda coordinator: None):
        self.oracle = oracle
        self.journal = RunJournal(oracle._project_dir)
        self.finished = threading.Event()
        self.stopped_workers: set[str] = set()
        self._stop_seen = False
        self._lock = threading.Lock()
        self._changed = threading.Condition()
        self._on_event = on_event
        self._check_finished()

    @contextlib.contextmanager
    def _locked(self):
        """Serialise oracle calls; if the oracle raises, release its own lock too.

        KerasTuner's `@synchronized` has no try/finally: an exception inside an
        oracle method would leave the oracle locked for ever.
        """
        with self._lock:
            try:
                yield self.oracle
            except BaseException:
                if oracle_module.THREADS[self.oracle] == threading.current_thread().name:
                    oracle_module.THREADS[self.oracle] = None
                    oracle_module.LOCKS[self.oracle].release()
                raise

    # -- the oracle protocol, as the gRPC servicer calls it ---------------------------
    def get_space(self):
        with self._locked() as oracle:
            return oracle.get_space()

    def update_space(self, hyperparameters):
        with self._locked() as oracle:
            oracle.update_space(hyperparameters)

    def create_trial(self, tuner_id: str):
        with self._locked() as oracle:
            resumed = tuner_id in oracle.ongoing_trials
            trial = oracle.create_trial(tuner_id)
            if trial.status == RUNNING and not resumed:
                self.journal.record(event="start", trial=trial.trial_id, worker=tuner_id)
                log.info("trial %s -> %s: %s", trial.trial_id, tuner_id, trial.hyperparameters.values)
            elif trial.status == RUNNING:
                log.info("trial %s resumed by %s", trial.trial_id, tuner_id)
            elif trial.status == STOPPED:
                self._stop_seen = True
                if tuner_id not in self.stopped_workers:
                    self.stopped_workers.add(tuner_id)
                    log.info("%s told to stop: no trials left", tuner_id)
            self._check_finished()
        self._notify()
        self._on_event(self)
        return trial

    def update_trial(self, trial_id, metrics, step=0):
        with self._locked() as oracle:
            return oracle.update_trial(trial_id, metrics, step=step)

    def end_trial(self, trial):
        with self._locked() as oracle:
            oracle.end_trial(trial)
            ended = oracle.trials[trial.trial_id]
            run = self.journal.runs.get(trial.trial_id, {})
            seconds = time.time() - run["started"] if run.get("started") else None
            self.journal.record(event="end", trial=trial.trial_id, status=ended.status, seconds=seconds)
            log.info("trial %s %s by %s: %s=%s", trial.trial_id, ended.status, run.get("worker"),
                     oracle.objective.name, ended.score)
            self._check_finished()
        self._on_event(self)

    def get_trial(self, trial_id):
        with self._locked() as oracle:
            return oracle.get_trial(trial_id)

    def get_best_trials(self, num_trials=1):
        with self._locked() as oracle:
            return oracle.get_best_trials(num_trials)

    def wait_for_stop_heard(self, timeout: float) -> list[str]:
        """Block until every worker that asked for work was told STOPPED, or `timeout`.

        Returns the workers still unaware (dead, or slower than the timeout).
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                with self._lock:
                    waiting = sorted(self.oracle.tuner_ids)
                left = deadline - time.monotonic()
                if not waiting or left <= 0:
                    return waiting
                self._changed.wait(left)

    def _notify(self):
        with self._changed:
            self._changed.notify_all()

    # -- state of the search --------------------------------------------------------
    def _check_finished(self):
        oracle = self.oracle
        budget_spent = bool(oracle.max_trials) and len(oracle.trials) >= oracle.max_trials
        if (self._stop_seen or budget_spent) and not oracle.ongoing_trials and not oracle._retry_queue:
            self.finished.set()

    def snapshot(self) -> dict:
        """A consistent view for progress lines and the results files."""
        with self._locked() as oracle:
            trials = list(oracle.trials.values())
            best = oracle.get_best_trials(1)
            return {
                "trials": trials,
                "runs": {k: dict(v) for k, v in self.journal.runs.items()},
                "running": {w: t.trial_id for w, t in oracle.ongoing_trials.items()},
                "max_trials": oracle.max_trials,
                "objective": oracle.objective,
                "best": best[0] if best and best[0].status == trial_module.TrialStatus.COMPLETED else None,
                "space": [hp.name for hp in oracle.get_space().space],
            }

    def close(self):
        self.journal.close()

"""Serves one stock KerasTuner oracle to many workers, and survives their faults.

The oracle keeps its own algorithm and bookkeeping; everything a cluster
needs around it lives here, in one place:
- one lock for all calls, released even when the oracle raises (KerasTuner's
  `@synchronized` has no try/finally and would stay locked for ever);
- atomic state files (write + rename) instead of in-place JSON rewrites;
- worker identity and leases (chief.leases): a duplicate id is refused, a
  silent worker's trial is re-queued, a late report from it is ignored;
- who ran which attempt for how long, in an append-only journal;
- a chief restart that neither loses nor re-runs trials;
- the moment the search is over (or must stop: too many failures in a row).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import threading
import time
import types

import numpy as np
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import oracle as oracle_module
from keras_tuner.src.engine import trial as trial_module

from chief import progress
from chief.journal import RunJournal
from chief.leases import Leases
from shared.atomic import write_text_atomic

log = logging.getLogger("ktcluster.chief")

RUNNING = trial_module.TrialStatus.RUNNING
STOPPED = trial_module.TrialStatus.STOPPED
IDLE = trial_module.TrialStatus.IDLE
INVALID = trial_module.TrialStatus.INVALID
FINAL = (trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.FAILED)
FINISHED_MARKER = "ktcluster-finished.json"
DEAF_AFTER = 1.0  # seconds an oracle call may hold the lock before its time stops counting against leases


class InconsistentState(RuntimeError):
    """The project's files contradict each other: resuming would hand out trial ids again."""


def short_message(message: str | None) -> str:
    """'ExceptionType: text' from a traceback (its last non-empty line), on one line."""
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split())[:500] if lines else ""


class StateWriter:
    """Writes KerasTuner's state files (trial.json per trial, oracle.json) behind the hot path.

    Every acknowledged change is already durable before the reply, as one
    journal append (chief.journal): on this project's machines creating a file
    costs ~500x an append, and oracle.json is O(trials) to encode. The files
    are KerasTuner's view of the project (its tools, `tuner.reload()`), so they
    are written here, coalesced, when the chief is quiet (`quiet` seconds with
    no change) and at the latest `max_lag` seconds after a change: trial files
    first, then the oracle.json that names them. A changed trial is only
    marked; its state is taken when its file is written (a progress report
    then costs no copy of the trial, search space included), `CHUNK` trials at
    a time under the lock, so a long backlog never holds the oracle for long.
    `load_project` rebuilds whatever the files lack from the journal. Oracles
    whose own extra state moves with every trial (Hyperband's brackets,
    GridSearch's order) are saved synchronously, as stock does.
    """

    CHUNK = 256

    def __init__(self, oracle, lock: threading.Lock, fsync: bool = False, quiet: float = 0.25,
                 max_lag: float = 30.0):
        self.oracle, self._lock, self.fsync, self.quiet, self.max_lag = oracle, lock, fsync, quiet, max_lag
        import keras_tuner as kt

        self.behind = isinstance(oracle, (kt.oracles.RandomSearchOracle, kt.oracles.BayesianOptimizationOracle))
        self._trials: dict[str, object] = {}  # trial id -> its Trial, changed since its trial.json
        self._dirty, self._closing = threading.Event(), threading.Event()
        self._writing = threading.Lock()  # one write at a time, so an older state never lands last
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        if self.behind:
            self._thread.start()

    def _state(self) -> dict:
        """A copy of the state, safe to encode while the oracle moves on (caller holds the lock)."""
        return {k: list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
                for k, v in self.oracle.get_state().items()}

    def _write_trial(self, state: dict) -> None:
        path = os.path.join(self.oracle._get_trial_dir(state["trial_id"]), "trial.json")
        write_text_atomic(path, json.dumps(state), fsync=self.fsync)

    def _write_oracle(self, state: dict) -> None:
        write_text_atomic(self.oracle._get_oracle_fname(), json.dumps(state), fsync=self.fsync)

    def trial_changed(self, trial) -> None:
        """A trial changed, already journaled (called with the lock held)."""
        if self.behind:
            self._trials[trial.trial_id] = trial
            self._mark_dirty()
        else:
            self._write_trial(trial.get_state())

    def save(self) -> None:
        """The oracle's `save` (called with the lock held)."""
        if self.behind:
            self._mark_dirty()
        else:
            self._write_oracle(self._state())

    def _mark_dirty(self) -> None:
        """Set only if clear: `Event.set` takes a lock and notifies, twice per trial otherwise.
        Safe: the writer clears the flag before it reads the state, never after."""
        if not self._dirty.is_set():
            self._dirty.set()

    def flush(self) -> None:
        """Write the marked trials' files, then oracle.json. The oracle's state is taken under the
        same lock as the last trial states, so oracle.json never names a trial without a file
        (stock `reload` would refuse the project)."""
        with self._writing:
            pending: dict[str, object] = {}
            try:
                while True:
                    with self._lock:
                        pending.update(self._trials)
                        self._trials = {}
                        chunk = list(itertools.islice(pending, self.CHUNK))
                        states = [pending[trial_id].get_state() for trial_id in chunk]
                        oracle_state = self._state() if len(chunk) == len(pending) else None
                    for state in states:
                        self._write_trial(state)
                    for trial_id in chunk:
                        del pending[trial_id]
                    if oracle_state is not None:
                        self._write_oracle(oracle_state)
                        return
            except BaseException:
                with self._lock:  # mark what was not written again
                    self._trials = {**pending, **self._trials}
                raise

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            first_change = time.monotonic()
            while True:  # wait for a quiet moment (or the longest lag allowed)
                self._dirty.clear()
                if self._closing.wait(self.quiet):
                    return  # close() writes what is left
                if not self._dirty.is_set() or time.monotonic() - first_change >= self.max_lag:
                    break
            try:
                self.flush()
            except OSError as exc:  # the journal holds it all; try again at the next quiet moment
                log.error("writing the state files failed (will retry): %s", exc)
                self._dirty.set()

    def close(self) -> None:
        self._closing.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()


def _check_consecutive_failures(oracle):
    """Stock scans every ended trial on each end (O(trials)); only the tail can form a new run."""

    def check():
        limit, run = oracle.max_consecutive_failed_trials, 0
        for trial_id in reversed(oracle.end_order):
            if oracle.trials[trial_id].status != trial_module.TrialStatus.FAILED:
                break
            run += 1
            if run >= limit:
                raise RuntimeError(f"Number of consecutive failures exceeded the limit of {limit}.\n"
                                   + (oracle.trials[trial_id].message or ""))

    return check


def _update_trial(oracle, saved):
    """Stock `update_trial` without the part whose result it discards: `MetricsTracker.update`
    computes the best value before and after each report (numpy over the whole history, twice)
    only to return whether it improved. `saved(trial, step, values, directions)` records what the
    report added (and the direction of each metric new to the trial) instead of the whole trial."""

    def update_trial(trial_id, metrics, step=0):
        trial = oracle.trials[trial_id]
        oracle._check_objective_found(metrics)
        values, directions = {}, {}
        for name, value in metrics.items():
            if not trial.metrics.exists(name):
                trial.metrics.register(name, direction=oracle_module._maybe_infer_direction_from_objective(
                    oracle.objective, name))
                directions[name] = trial.metrics.metrics[name].direction
            values[name] = float(value)
            trial.metrics.metrics[name].update(values[name], step=step)
        saved(trial, step, values, directions)
        return trial

    return update_trial


def best_of(history) -> tuple:
    """(best value, its step) of a MetricHistory, as stock's `get_best_value` and `get_best_step`
    give them (NaN ignored; all NaN: (nan, None); the first step holding the best value), without
    their numpy calls: they went through `np.mean` and `np.nanmax` twice, ~15% of a trial's cost on
    the chief. A value from several executions is still averaged by numpy, as stock averages it."""
    means = [(obs.value[0] if len(obs.value) == 1 else float(np.mean(obs.value)), obs.step)
             for obs in history._observations.values()]
    if not means:
        return None, None
    numbers = [value for value, _ in means if value == value]
    if not numbers:
        return math.nan, None
    best = max(numbers) if history.direction == "max" else min(numbers)
    return best, next(step for value, step in means if value == best)


def _score_trial(oracle):
    """Stock `score_trial` (best value and step of the objective) through `best_of`."""

    def score_trial(trial):
        history = trial.metrics.metrics.get(oracle.objective.name)
        if history is None:
            return type(oracle).score_trial(oracle, trial)  # stock's own error
        trial.score, trial.best_step = best_of(history)

    return score_trial


def _random_values(oracle):
    """Stock `Oracle._random_values`, the same values drawn in the same order from the same seeds,
    without the scratch HyperParameters it builds per draw: stock merges the space into it one
    hyperparameter at a time, copying each through its config (a cost that grows with the space),
    only to ask which are active. Active means every condition holds on the values drawn before it."""

    def random_values():
        for _ in range(oracle._max_collisions + 1):
            values = {}
            for hp in oracle.hyperparameters.space:
                if all(condition.is_active(values) for condition in hp.conditions):
                    values[hp.name] = hp.random_sample(oracle._seed_state)
                    oracle._seed_state += 1
            if not oracle._duplicate(values):
                return values
        return None

    return random_values


def _unsynchronized(method):
    """The function inside KerasTuner's `@synchronized` wrapper (itself if not wrapped).

    The wrapper takes a second, per-oracle lock and calls `threading.currentThread()`,
    a deprecated alias that emits a DeprecationWarning on every call: ~7% of the chief's
    time under load. Every call from the coordinator already holds its one lock.
    """
    cells = dict(zip(method.__code__.co_freevars, method.__closure__ or ()))
    inner = cells.get("func")
    return inner.cell_contents if inner is not None and callable(inner.cell_contents) else method


def fast_space_copies(hyperparameters) -> None:
    """Give the oracle's search space a `copy` that skips Keras's generic deserializer and
    remembers the space it copied, encoded (see `hyperparameters_proto`).

    `oracle.create_trial` copies the space for every trial; stock copies go through
    `keras.saving`'s deserializer, which inspects each class's signature per hyperparameter
    (~70% of the copy, the largest single cost of a trial on the chief). Each hyperparameter's
    own `from_config` gives the same objects (tested against the stock copy). The configs and the
    encoded space are made once per size of the space: `update_space` only ever adds to it.
    """
    made = {"size": -1}

    def copy():
        if made["size"] != len(hyperparameters.space):
            made.update(size=len(hyperparameters.space),
                        configs=[(type(hp), hp.get_config()) for hp in hyperparameters.space],
                        encoded=hp_module.HyperParameters.to_proto(hyperparameters).space)
        space = hp_module.HyperParameters()
        for cls, config in made["configs"]:
            hp = cls.from_config(dict(config))  # from_config replaces the config's conditions
            space._hps[hp.name].append(hp)
            space._space.append(hp)
        space.values = dict(hyperparameters.values)
        space.ktc_encoded_space = (made["size"], made["encoded"])
        return space

    hyperparameters.copy = copy


def hyperparameters_proto(hyperparameters):
    """`hyperparameters.to_proto()`; for a copy made by `fast_space_copies`, whose space has not
    grown since, only its values are encoded (by stock) and the space is the one encoded once:
    only the values differ from trial to trial."""
    size, encoded = getattr(hyperparameters, "ktc_encoded_space", (None, None))
    if size != len(hyperparameters.space):
        return hyperparameters.to_proto()
    values = hp_module.HyperParameters()
    values.values = hyperparameters.values
    proto = values.to_proto()
    proto.space.CopyFrom(encoded)
    return proto


def _record_values_once(oracle):
    """Stock `_record_values` (fill in the active values, hash them, remember the hash), skipped
    when a trial ends with the very hyperparameters, values unchanged, recorded when it was
    created: stock records again at the end in case the build added hyperparameters, and the
    servicer hands back the object it sent only when the worker echoed it unchanged."""
    stock, created = type(oracle)._record_values, {}  # running trial id -> what was recorded

    def record_values(trial):
        hyperparameters = trial.hyperparameters
        now = (hyperparameters, len(hyperparameters.space), hyperparameters.values)
        recorded = created.pop(trial.trial_id, None)
        if recorded and recorded[0] is now[0] and recorded[1:] == now[1:]:
            return
        stock(oracle, trial)
        if trial.trial_id not in oracle.trials:  # from create_trial, which lists the trial after
            created[trial.trial_id] = (hyperparameters, len(hyperparameters.space), dict(hyperparameters.values))

    return record_values


def harden(oracle, writer: StateWriter, journal: RunJournal) -> None:
    """Trial states journaled (one append; a progress report as what it added) and their files
    written behind, atomic state files (write + rename), an O(1) failure check, trial folders
    made once (stock asks TensorFlow's gfile to create them on every call), the hot calls without
    KerasTuner's own lock (`update_trial` also without its discarded best-value scans), scoring
    without numpy, random values drawn without a scratch copy of the space, and a trial's values
    recorded once when it ends as it started."""
    project_dir = oracle._project_dir
    made: set[str] = set()

    def trial_dir(trial_id):
        path = os.path.join(project_dir, f"trial_{trial_id}")
        if path not in made:
            os.makedirs(path, exist_ok=True)
            made.add(path)
        return path

    def save_trial(trial):
        journal.record_trial(trial.get_state())
        writer.trial_changed(trial)

    def save_metrics(trial, step, values, directions):
        journal.record_metrics(trial.trial_id, step, values, directions)
        writer.trial_changed(trial)

    for name in ("create_trial", "end_trial"):
        setattr(oracle, name, types.MethodType(_unsynchronized(getattr(type(oracle), name)), oracle))
    oracle.save = writer.save
    oracle._get_trial_dir = trial_dir
    oracle._save_trial = save_trial
    oracle._check_consecutive_failures = _check_consecutive_failures(oracle)
    oracle.update_trial = _update_trial(oracle, save_metrics)
    if type(oracle).score_trial is oracle_module.Oracle.score_trial:  # an oracle's own scoring stays
        oracle.score_trial = _score_trial(oracle)
    if type(oracle)._random_values is oracle_module.Oracle._random_values:
        oracle._random_values = _random_values(oracle)
    if type(oracle)._record_values is oracle_module.Oracle._record_values:
        oracle._record_values = _record_values_once(oracle)


def load_project(oracle, journal: RunJournal) -> tuple[dict[str, str], list[str]]:
    """Reload a saved project; return the trials that were running, by worker, and the
    trials whose files lagged behind the journal (to be rewritten).

    The journal (appended before every reply) is the truth; the trial files
    and oracle.json may lag behind it (see StateWriter) and stock
    `reload` re-queues every trial it lists as ongoing, including ones that had
    already finished (`end_trial` saves before it un-lists them): that is how a
    stock chief re-ran finished trials. Here:
    - a journal with trials and no oracle.json (deleted by hand) stops the chief
      (InconsistentState): starting afresh would hand its trial ids out again;
    - a trial whose last attempt started and never ended stays with its
      worker, which may still be training and report it; its lease decides;
    - a trial whose last attempt ended for a retry waits in the queue;
    - a trial that exists but was never acknowledged to a worker is queued;
    - finished trials are never re-queued.
    """
    if not os.path.exists(oracle._get_oracle_fname()):
        if journal.runs or journal.states:  # the chief writes oracle.json before its first trial
            raise InconsistentState(
                f"{oracle._project_dir} has a journal of {len(set(journal.runs) | set(journal.states))} trials but "
                "no oracle.json; restore oracle.json, or start a new search (another KTC_PROJECT)")
        return {}, []
    oracle.reload()
    runs, stale = journal.runs, []
    for trial_id, state in journal.states.items():
        known = oracle.trials.get(trial_id)
        if known is None or known.get_state() != state:
            oracle.trials[trial_id] = trial_module.Trial.from_state(state)
            stale.append(trial_id)
    oracle.ongoing_trials, queue, restored = {}, [], {}
    for trial_id, trial in oracle.trials.items():
        run = runs.get(trial_id)
        if trial.status in FINAL or (run and run["status"] in FINAL):
            continue
        if run and run["status"] == RUNNING:
            trial.status = RUNNING
            oracle.ongoing_trials[run["worker"]] = trial
            oracle.tuner_ids.add(run["worker"])
            restored[run["worker"]] = trial_id
        else:
            queue.append(trial_id)
    oracle._retry_queue = queue
    known = set(oracle.start_order)
    oracle.start_order += [t for t in sorted(oracle.trials, key=int) if t not in known]
    ended = set(oracle.end_order)
    finals = sorted((run.get("ended_at", 0), t) for t, run in runs.items()
                    if t not in ended and t in oracle.trials and oracle.trials[t].status in FINAL)
    oracle.end_order += [t for _, t in finals]
    for trial_id, run in runs.items():
        oracle._run_times[trial_id] = max(oracle._run_times[trial_id], run["ends"])
    for trial_id, trial in oracle.trials.items():
        if oracle._id_to_hash[trial_id] is None:
            digest = oracle._compute_values_hash(trial.hyperparameters.values)
            oracle._id_to_hash[trial_id] = digest
            oracle._tried_so_far.add(digest)
    return restored, stale


class Coordinator:
    """Thread-safe facade over an oracle; `finished` is set when the search is over."""

    def __init__(self, oracle, lease_seconds: float, heartbeat_seconds: float,
                 on_event=lambda coordinator: None, clock=time.monotonic, fsync: bool = False):
        self._lock = threading.Lock()
        self.oracle = oracle
        self.project_dir = oracle._project_dir
        self.journal = RunJournal(self.project_dir, fsync=fsync)
        self.writer = StateWriter(oracle, self._lock, fsync=fsync)
        harden(oracle, self.writer, self.journal)
        restored, stale = load_project(oracle, self.journal)
        fast_space_copies(oracle.hyperparameters)  # after the reload, which replaces the space
        with self._lock:
            for trial_id in stale:
                self.writer.trial_changed(oracle.trials[trial_id])
        self.leases = Leases(lease_seconds, presence_seconds=3 * heartbeat_seconds, clock=clock)
        self.heartbeat_seconds = heartbeat_seconds
        self._handed_to = {trial_id: worker for worker, trial_id in restored.items()}  # running trial -> worker
        for worker, trial_id in restored.items():
            self.leases.grant(worker)
            log.info("trial %s was running on %s before the restart: kept for it for %.0fs",
                     trial_id, worker, lease_seconds)
        self.finished = threading.Event()
        self.fatal: str | None = None
        self.stopped_workers: set[str] = set()
        self._stop_seen = False
        self._changed = threading.Condition()
        self._on_event = on_event
        self.trial_lines = progress.LineBudget(clock=clock)  # start and COMPLETED lines; trouble always logs
        self._stats = self._initial_stats()
        self._check_finished()
        if not self.finished.is_set():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.project_dir, FINISHED_MARKER))

    @contextlib.contextmanager
    def _locked(self):
        """Serialise oracle calls; what they journaled is durable when they return (before any
        reply). If the oracle raises, release its own lock too. A call that held the lock for
        over DEAF_AFTER seconds (a Bayesian fit at a thousand trials takes many) kept every
        heartbeat waiting: that time does not count against any lease."""
        with self._lock:
            start = self.leases.clock()
            try:
                yield self.oracle
            except BaseException:
                if oracle_module.THREADS[self.oracle] == threading.current_thread().name:
                    oracle_module.THREADS[self.oracle] = None
                    oracle_module.LOCKS[self.oracle].release()
                raise
            finally:
                self.journal.commit()
                held = self.leases.clock() - start
                if held > DEAF_AFTER:
                    self.leases.deaf(held)
                    if held > 2 * self.heartbeat_seconds:
                        log.warning("an oracle call held the chief for %.1fs (heartbeats waited; that time does "
                                    "not count against leases)", held)

    # -- workers: identity and liveness ----------------------------------------------
    def register(self, worker: str, instance: str, info: str = "") -> dict:
        """Raises leases.DuplicateWorker if another live process uses `worker`."""
        with self._lock:
            self.leases.register(worker, instance, info)
        log.info("%s registered (%s)", worker, info or instance)
        return {"heartbeat_seconds": self.heartbeat_seconds, "lease_seconds": self.leases.lease_seconds}

    def heartbeat(self, worker: str, instance: str) -> dict:
        with self._lock:
            return {"ok": self.leases.beat(worker, instance)}

    def _admit(self, worker: str, instance: str | None) -> None:
        """Calls carrying an instance must come from the registered holder (or claim a free id)."""
        if instance and not self.leases.beat(worker, instance):
            self.leases.register(worker, instance)

    def expire_leases(self) -> list[str]:
        """Re-queue (or fail, once out of retries) the trials of workers silent past their lease."""
        expired = []
        with self._locked() as oracle:
            silent = self.leases.expired()
            for worker in silent:
                oracle.tuner_ids.discard(worker)  # do not wait for it to hear STOPPED
                trial = oracle.ongoing_trials.get(worker)
                if trial is None:
                    continue
                message = f"LeaseExpired: {worker} silent for over {self.leases.lease_seconds:.0f}s"
                trial.status, trial.message = INVALID, message
                self._end(trial, worker, message)
                expired.append(trial.trial_id)
                log.warning("trial %s: %s; %s", trial.trial_id, message,
                            "re-queued" if trial.trial_id in oracle._retry_queue else "out of retries")
            self._check_finished()
        if silent:
            self._notify()
        if expired:
            self._on_event(self)
        return expired

    # -- the oracle protocol, as the gRPC servicer calls it ---------------------------
    def get_space(self):
        with self._locked() as oracle:
            return oracle.get_space()

    def update_space(self, hyperparameters):
        with self._locked() as oracle:
            oracle.update_space(hyperparameters)

    def create_trial(self, worker: str, instance: str | None = None):
        """Returns (trial, attempt): attempt counts from 1 per trial."""
        with self._locked() as oracle:
            self._admit(worker, instance)
            if self.fatal:
                return trial_module.Trial(oracle.get_space(), status=STOPPED), 0
            resumed = worker in oracle.ongoing_trials
            trial = oracle.create_trial(worker)
            if trial.status == STOPPED and self._retry_possible_elsewhere(worker):
                # Stock says STOPPED once the budget is handed out, but a trial still running on
                # another worker may yet fail (or lose its lease) and come back for a retry:
                # this worker waits (IDLE) instead of leaving that retry with nobody to run it.
                self._stop_seen = True
                oracle.tuner_ids.add(worker)
                trial = trial_module.Trial(oracle.get_space(), status=IDLE)
            if trial.status == RUNNING:
                self._handed_to[trial.trial_id] = worker
                if resumed:
                    log.info("trial %s resumed by %s", trial.trial_id, worker)
                else:
                    if trial.trial_id in self.journal.runs:  # a retry: stock leaves trial.json saying INVALID
                        oracle._save_trial(trial)
                    self.journal.record(event="start", trial=trial.trial_id, worker=worker)
                    if self.trial_lines.allow():
                        log.info("trial %s -> %s (attempt %d): %s", trial.trial_id, worker,
                                 self.journal.runs[trial.trial_id]["attempts"], trial.hyperparameters.values)
            elif trial.status == STOPPED:
                self._stop_seen = True
                if worker not in self.stopped_workers:
                    self.stopped_workers.add(worker)
                    log.info("%s told to stop: no trials left", worker)
            attempt = self.journal.runs.get(trial.trial_id, {}).get("attempts", 0) if trial.status == RUNNING else 0
            self._check_finished()
        if trial.status == STOPPED:
            self._notify()
        self._on_event(self)
        return trial, attempt

    def _retry_possible_elsewhere(self, worker: str) -> bool:
        oracle = self.oracle
        return any(w != worker and oracle._run_times[t.trial_id] < oracle.max_retries_per_trial  # ended attempts
                   for w, t in oracle.ongoing_trials.items())

    def _owner_of(self, trial_id: str) -> str | None:
        """The worker running `trial_id`: the one it was handed to, checked against the oracle's
        running trials in one lookup (every report asks, and stock workers do not say who they
        are); a scan of them if that record is missing or stale."""
        ongoing = self.oracle.ongoing_trials
        worker = self._handed_to.get(trial_id)
        trial = ongoing.get(worker) if worker is not None else None
        if trial is not None and trial.trial_id == trial_id:
            return worker
        for worker, trial in ongoing.items():
            if trial.trial_id == trial_id:
                return worker
        return None

    def _accepted_owner(self, trial_id: str, worker: str | None, what: str) -> str | None:
        """The trial's owner if the report counts: only from the worker that holds the trial now
        (stock workers send no id); None (and a warning) if it is ignored."""
        owner = self._owner_of(trial_id)
        if owner is not None and (worker is None or worker == owner):
            return owner
        log.warning("%s of trial %s from %s ignored: %s", what, trial_id, worker or "a worker",
                    f"it now belongs to {owner}" if owner else "it is not running (lease expired or already ended)")
        return None

    def update_trial(self, trial_id, metrics, step=0, worker=None, instance=None):
        with self._locked() as oracle:
            if worker:
                self._admit(worker, instance)
            if self._accepted_owner(trial_id, worker, "progress report") is None:
                return oracle.trials[trial_id]
            return oracle.update_trial(trial_id, metrics, step=step)

    def end_trial(self, trial, worker=None, instance=None, message: str = "", used=None) -> bool:
        """Record a finished attempt exactly once; False if the report was ignored."""
        with self._locked():
            if worker:
                self._admit(worker, instance)
            owner = self._accepted_owner(trial.trial_id, worker, "result")
            if owner is None:
                return False
            if message:
                trial.message = message
            self._end(trial, owner, message, used)
            self._check_finished()
        self._on_event(self)
        return True

    def _end(self, trial, worker, message, used=None):
        """oracle.end_trial + journal; a 'too many failures in a row' error stops the search."""
        oracle = self.oracle
        try:
            oracle.end_trial(trial)
        except RuntimeError as exc:  # stock: max_consecutive_failed_trials reached
            if "consecutive failures" not in str(exc):
                raise
            self.fatal = (f"{oracle.max_consecutive_failed_trials} trials failed in a row "
                          f"(KTC_MAX_CONSECUTIVE_FAILURES); last error: {short_message(message)}")
            oracle.ongoing_trials.pop(worker, None)
            oracle._save_trial(oracle.trials[trial.trial_id])
            oracle.save()
            log.error("search stopped: %s", self.fatal)
        self._handed_to.pop(trial.trial_id, None)
        ended = oracle.trials[trial.trial_id]
        run = self.journal.runs.get(trial.trial_id, {})
        seconds = time.time() - run["started"] if run.get("started") else None
        self._count(ended, seconds, final=trial.trial_id not in oracle._retry_queue)
        status = "RETRY" if trial.trial_id in oracle._retry_queue else ended.status
        self.journal.record(event="end", trial=trial.trial_id, status=status, seconds=seconds,
                            message=short_message(message), used=used)
        if status != "COMPLETED":
            log.info("trial %s %s by %s: %s", trial.trial_id, status, worker, short_message(message))
        elif self.trial_lines.allow():
            log.info("trial %s %s by %s: %s=%s", trial.trial_id, status, worker, oracle.objective.name, ended.score)

    def get_trial(self, trial_id):
        with self._locked() as oracle:
            return oracle.get_trial(trial_id)

    def running_trial_ids(self) -> set[str]:
        with self._lock:
            return {trial.trial_id for trial in self.oracle.ongoing_trials.values()}

    def get_best_trials(self, num_trials=1):
        with self._locked() as oracle:
            return oracle.get_best_trials(num_trials)

    # -- progress, in O(1) per event (no work that grows with the number of trials) --------
    def _initial_stats(self) -> dict:
        stats = {"COMPLETED": 0, "FAILED": 0, "seconds": 0.0, "timed": 0, "best": None}
        for trial in self.oracle.trials.values():
            if trial.status in FINAL:
                stats[trial.status] += 1
        for run in self.journal.runs.values():
            if run.get("seconds"):
                stats["seconds"] += run["seconds"]
                stats["timed"] += 1
        best = self.oracle.get_best_trials(1)
        if best and best[0].status == trial_module.TrialStatus.COMPLETED:
            stats["best"] = (best[0].trial_id, best[0].score)
        return stats

    def _count(self, trial, seconds, final: bool) -> None:
        stats = self._stats
        if seconds:
            stats["seconds"] += seconds
            stats["timed"] += 1
        if final and trial.status in FINAL:
            stats[trial.status] += 1
        if trial.status == trial_module.TrialStatus.COMPLETED and trial.score is not None:
            better = max if self.oracle.objective.direction == "max" else min
            if stats["best"] is None or better(trial.score, stats["best"][1]) != stats["best"][1]:
                stats["best"] = (trial.trial_id, trial.score)

    def progress(self) -> dict:
        """The summary `progress.line` prints, without touching every trial; it takes the count of
        trial lines skipped since the last call."""
        with self._lock:
            stats, oracle = self._stats, self.oracle
            running = {w: t.trial_id for w, t in oracle.ongoing_trials.items()}
            total = oracle.max_trials or len(oracle.trials)
            mean = stats["seconds"] / stats["timed"] if stats["timed"] else None
            return {"completed": stats["COMPLETED"], "failed": stats["FAILED"], "running": running,
                    "total": total, "queued": len(oracle._retry_queue), "objective": oracle.objective.name,
                    "best": stats["best"], "skipped": self.trial_lines.take_skipped(),
                    "budget": self.trial_lines.rate,
                    "eta": progress.eta(total, stats["COMPLETED"], stats["FAILED"], len(running), mean)}

    # -- state of the search --------------------------------------------------------
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
        """Wake `wait_for_stop_heard`: the set of workers yet to hear STOPPED shrank."""
        with self._changed:
            self._changed.notify_all()

    def _check_finished(self):
        oracle = self.oracle
        budget_spent = bool(oracle.max_trials) and len(oracle.trials) >= oracle.max_trials
        over = (self._stop_seen or budget_spent) and not oracle.ongoing_trials and not oracle._retry_queue
        if over or self.fatal:
            self.finished.set()

    def mark_finished(self, summary: dict) -> None:
        """Tell late or restarted workers (they share the state dir) that there is nothing left to do."""
        write_text_atomic(os.path.join(self.project_dir, FINISHED_MARKER), json.dumps(summary) + "\n")

    def snapshot(self) -> dict:
        """A consistent view for progress lines, status and the results files."""
        with self._locked() as oracle:
            trials = list(oracle.trials.values())
            best = oracle.get_best_trials(1)
            return {
                "trials": trials,
                "runs": {k: dict(v) for k, v in self.journal.runs.items()},
                "running": {w: t.trial_id for w, t in oracle.ongoing_trials.items()},
                "queued": list(oracle._retry_queue),
                "max_trials": oracle.max_trials,
                "objective": oracle.objective,
                "best": best[0] if best and best[0].status == trial_module.TrialStatus.COMPLETED else None,
                "space": [hp.name for hp in oracle.get_space().space],
                "fatal": self.fatal,
            }

    def save_state(self) -> None:
        """Write oracle.json now (start-up, shutdown)."""
        self.writer.flush()

    def close(self):
        self.writer.close()
        self.journal.close()

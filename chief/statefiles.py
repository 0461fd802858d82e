"""KerasTuner's state files (trial.json per trial, oracle.json), written behind the journal, and
the policy for a failing state disk.

Every acknowledged change is already durable as a journal line (chief.journal); the files are
KerasTuner's view of the project (its tools, `tuner.reload()`), rebuilt from the journal on start
when they lag. Writing them on every call would cost O(trials) per call (oracle.json lists every
trial), so they are written when the chief is quiet, and at the latest `max_lag` seconds after a
change: trial files first, then the oracle.json that names them.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time

from shared.atomic import write_text_atomic

log = logging.getLogger("ktcluster.chief")


class StorageFaults:
    """Failures of the state disk, by what failed ("journal", "state files"): logged at most every
    `every` seconds with a count; `over()` once one of them has failed for longer than `grace`
    seconds without a success. Thread-safe."""

    def __init__(self, grace: float, every: float = 5.0, clock=time.monotonic):
        self.grace, self.every, self.clock = grace, every, clock
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}  # what -> first failure since its last success
        self._count, self._logged_at, self._last = 0, -float("inf"), ""
        self._failures: dict[str, int] = {}  # what -> failures since the chief started (chief.metrics)

    def failed(self, what: str, exc: OSError) -> None:
        with self._lock:
            now = self.clock()
            since = self._since.setdefault(what, now)
            self._count += 1
            self._failures[what] = self._failures.get(what, 0) + 1
            self._last = f"{what}: {exc.strerror or exc}"
            if now - self._logged_at >= self.every:
                self._logged_at = now
                log.error("the state disk fails (%s); %d failures in %.0fs, retrying; the chief exits after "
                          "%.0fs of this (KTC_STORAGE_GRACE_SECONDS)", self._last, self._count, now - since, self.grace)

    def succeeded(self, what: str) -> None:
        with self._lock:
            since = self._since.pop(what, None)
            if since is not None:
                log.warning("%s: the state disk works again after %.0fs", what, self.clock() - since)
            if not self._since:
                self._count, self._logged_at = 0, -float("inf")

    def failures(self) -> dict[str, int]:
        """Failures since the chief started, by what failed (never reset: a counter)."""
        with self._lock:
            return dict(self._failures)

    @property
    def failing(self) -> bool:
        return bool(self._since)

    def over(self) -> str | None:
        """A one-line reason to stop, once a failure outlasts the grace period."""
        with self._lock:
            if not self._since or self.clock() - min(self._since.values()) <= self.grace:
                return None
            return (f"the state disk has failed for {self.clock() - min(self._since.values()):.0f}s ({self._last}); "
                    "free space or fix the disk, then start the chief again: it resumes from its journal")


class StateWriter:
    """Writes the state files of `oracle` (a ClusterOracleMixin) behind the hot path.

    `trial_changed` and `save` are called with `lock` held (the coordinator's); the writer takes
    that lock only to copy states, `CHUNK` trials at a time. Oracles whose own extra state moves
    with every trial (Hyperband's brackets, GridSearch's order) are saved synchronously, as stock
    does. Failures are reported to `faults` and retried with backoff; the journal holds it all.
    """

    CHUNK = 256

    def __init__(self, oracle, lock: threading.Lock, faults: StorageFaults, fsync: bool = False,
                 quiet: float = 0.25, max_lag: float = 30.0):
        import keras_tuner as kt

        self.oracle, self._lock, self.faults = oracle, lock, faults
        self.fsync, self.quiet, self.max_lag = fsync, quiet, max_lag
        self.behind = isinstance(oracle, (kt.oracles.RandomSearchOracle, kt.oracles.BayesianOptimizationOracle))
        self._trials: dict[str, object] = {}  # trial id -> its Trial, changed since its trial.json
        self._dirty, self._closing = threading.Event(), threading.Event()
        self._writing = threading.Lock()  # one write at a time, so an older state never lands last
        self._thread = threading.Thread(target=self._run, name="state-writer", daemon=True)
        if self.behind:
            self._thread.start()

    def _state(self) -> dict:
        """A copy of the oracle's state, safe to encode while it moves on (caller holds the lock)."""
        return {k: list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v
                for k, v in self.oracle.get_state().items()}

    def _write_trial(self, state: dict) -> None:
        write_text_atomic(self.oracle.trial_file(state["trial_id"]), json.dumps(state), fsync=self.fsync)

    def _write_oracle(self, state: dict) -> None:
        write_text_atomic(self.oracle.oracle_file(), json.dumps(state), fsync=self.fsync)

    def trial_changed(self, trial) -> None:
        if self.behind:
            self._trials[trial.trial_id] = trial
            self._dirty.set()
        else:
            self._write_trial(trial.get_state())

    def save(self) -> None:
        if self.behind:
            self._dirty.set()
        else:
            self._write_oracle(self._state())

    def flush(self) -> None:
        """Write the marked trials' files, then oracle.json, taken under the same lock as the last
        trial states (so it never names a trial without a file). Raises OSError; what was not
        written stays marked."""
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
                with self._lock:
                    self._trials = {**pending, **self._trials}
                raise

    def _run(self) -> None:
        backoff = self.quiet
        while True:
            self._dirty.wait()
            first_change = time.monotonic()
            while True:  # wait for a quiet moment (or the longest lag allowed)
                self._dirty.clear()
                if self._closing.wait(max(self.quiet, backoff)):
                    return  # close() writes what is left
                if not self._dirty.is_set() or time.monotonic() - first_change >= self.max_lag:
                    break
            try:
                self.flush()
            except OSError as exc:
                self.faults.failed("state files", exc)
                backoff = min(backoff * 2, 5.0)
                self._dirty.set()
            else:
                backoff = self.quiet
                self.faults.succeeded("state files")

    def close(self) -> None:
        """Stop the writer thread and write what is left (raises OSError if that fails)."""
        self._closing.set()
        self._dirty.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.flush()

"""The worker's ledger of its running attempts: which attempt of which trial this process runs,
since when, and whether the chief has said it is no longer ours. Thread-safe: the heartbeat
thread marks attempts lost while the training thread reads and ends them."""

from __future__ import annotations

import dataclasses
import threading
import time


@dataclasses.dataclass
class Attempt:
    """A trial this process runs: its attempt number, when the chief handed it out (monotonic
    clock), whether the chief has since said it is no longer ours, and the hyperparameters it
    used (its build, fit and run_trial: reported with its end)."""
    number: int
    since: float
    lost: bool = False
    used: tuple[str, ...] = ()


class AttemptLedger:
    """Trial id -> this process's running Attempt."""

    def __init__(self, clock=time.monotonic):
        self._attempts: dict[str, Attempt] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def start(self, trial_id: str, number: int) -> None:
        """The chief handed attempt `number` of `trial_id` to this process, now."""
        with self._lock:
            self._attempts[trial_id] = Attempt(number, self._clock())

    def number(self, trial_id: str) -> int | None:
        """The attempt number this process runs for `trial_id`, None if it runs none."""
        with self._lock:
            current = self._attempts.get(trial_id)
            return current.number if current else None

    def record_used(self, trial_id: str, names) -> None:
        """The hyperparameters our attempt at `trial_id` used (nothing if we run none)."""
        with self._lock:
            current = self._attempts.get(trial_id)
            if current is not None:
                current.used = tuple(sorted(names))

    def used(self, trial_id: str) -> list[str]:
        """What our attempt at `trial_id` used, as recorded ([] if nothing was)."""
        with self._lock:
            current = self._attempts.get(trial_id)
            return list(current.used) if current else []

    def is_lost(self, trial_id: str) -> bool:
        """True once the chief said our attempt at `trial_id` is no longer ours."""
        with self._lock:
            current = self._attempts.get(trial_id)
            return bool(current and current.lost)

    def lose(self, trial_id: str) -> int | None:
        """Mark our attempt at `trial_id` lost; its number if this did it (None: none, or already lost)."""
        with self._lock:
            current = self._attempts.get(trial_id)
            if current is None or current.lost:
                return None
            current.lost = True
            return current.number

    def unlisted(self, owned: dict, sent: float) -> list[tuple[str, object]]:
        """(trial id, what `owned` lists for it) for each attempt we run, handed out before `sent`
        and not yet lost, that `owned` (a heartbeat reply's `attempts`) does not list as ours."""
        with self._lock:
            mine = [(t, a.number) for t, a in self._attempts.items() if a.since < sent and not a.lost]
        return [(t, owned.get(t)) for t, number in mine if str(owned.get(t)) != str(number)]

    def trial_ids(self) -> list[str]:
        with self._lock:
            return list(self._attempts)

    def forget(self, trial_id: str) -> None:
        """The attempt ended (reported, or lost): nothing more is known of it."""
        with self._lock:
            self._attempts.pop(trial_id, None)

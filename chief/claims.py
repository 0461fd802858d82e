"""Who may hold a worker id and its running attempt: the coordinator's side of Register.

An attempt is one training by one process. A ktcluster worker's instance is a secret token made
by its process (worker.client); the journal's start line records its digest (`token`, see
chief.leases.token_digest), so after a chief restart only the process that presents the token
gets its running attempt back (chief.leases grants the id to that token for as long as a live
holder would keep it). Another process with the same id:
- is refused (DuplicateWorker, one line) while the holder counts as present;
- gets the id once the holder is gone, but never the holder's attempt: that attempt is ended
  as lost (`take_over`) and the trial goes back to the queue, so it runs again under a new
  attempt number (numbers never repeat, also across restarts: the journal numbers them).
Register also compares the worker's settings fingerprint with the chief's (shared.fingerprint)
and refuses a worker that disagrees, naming each difference.
"""

from __future__ import annotations

import logging

from chief.leases import token_digest
from chief.trials import Caller, Refused
from shared import fingerprint as fingerprints

log = logging.getLogger("ktcluster.chief")


class SettingsMismatch(Refused):
    """A worker whose model or settings differ from the chief's (one line naming each difference)."""

    code = "FAILED_PRECONDITION"


class ClaimsMixin:
    """Register, heartbeats and the admission of callers, for chief.coordinator.Coordinator
    (which provides the lock, the leases, the book, the oracle, `_kept` and `_lose`)."""

    fingerprint: dict | None = None  # the chief's settings fingerprint (shared.fingerprint)

    def register(self, worker: str, instance: str, info: str = "", fingerprint=None) -> dict:
        """Bind `worker` to the process whose token is `instance`. Raises leases.DuplicateWorker if
        another live process uses `worker`, SettingsMismatch if `fingerprint` (the worker's, when
        it sends one) disagrees with the chief's. A new process taking a free id never inherits
        the attempts the id's previous process was running (`take_over`)."""
        if fingerprint is not None and self.fingerprint is not None:
            differences = fingerprints.differences(self.fingerprint, fingerprint)
            if differences:
                log.warning("%s refused: its settings differ from the chief's (%s)", worker, "; ".join(differences))
                raise SettingsMismatch(f"worker {worker} disagrees with the chief: {'; '.join(differences)}; "
                                       "start every worker with the chief's settings and code")
        with self._locked():
            self.leases.register(worker, instance, info)
            self._take_over(worker, instance)
        log.info("%s registered (%s)", worker, info or "no host given")
        return {"heartbeat_seconds": self.heartbeat_seconds, "lease_seconds": self.leases.lease_seconds}

    def serving(self) -> None:
        """Call once the server answers: the trials kept for their workers across a restart are
        kept for one lease from now, not from when start-up began (on a busy machine start-up
        can take longer than a lease, which would lose them before any worker could call)."""
        with self._lock:
            unclaimed = set(self.leases.restart_granted())
        for worker, trial_id in self._kept.items():
            if worker in unclaimed:
                log.info("trial %s was running on %s before the restart: kept for it for %.0fs",
                         trial_id, worker, self.leases.lease_seconds)

    def heartbeat(self, worker: str, instance: str) -> dict:
        """`ok` False: register again. `attempts`: the trials `worker` holds now, with their
        attempt; one missing was taken away. `finished`: the search is over."""
        with self._lock:
            return {"ok": self.leases.beat(worker, instance), "attempts": self.book.owned_by(worker),
                    "finished": self.finished.is_set()}

    def _admit(self, caller: Caller, tuner_id: str | None = None) -> None:
        """Renew the caller's lease: a ktcluster worker must hold its id (or claim a free one);
        a stock client's call renews the lease of `tuner_id` (the id it holds or asks with)."""
        if caller.anonymous:
            if tuner_id is not None:
                self.leases.renew_stock(tuner_id)
        elif not self.leases.beat(caller.worker, caller.instance):
            self.leases.register(caller.worker, caller.instance)
            self._take_over(caller.worker, caller.instance)

    def _refuse_stock(self, caller: Caller) -> None:
        if caller.anonymous and not self.leases.stock_lease_seconds:
            raise Refused("this chief serves ktcluster workers (python -m worker), which name themselves and send "
                          "heartbeats; to serve stock KerasTuner clients too, set KTC_STOCK_LEASE_SECONDS longer "
                          "than an epoch")

    def _take_over(self, worker: str, instance: str) -> None:
        """`instance` now holds `worker`: end as lost every attempt of `worker` that another
        process started (its token differs), so the trial runs again under a new attempt
        number. Attempts recorded without a token (journals from before tokens) are kept."""
        token = token_digest(instance)
        for trial_id, run in list(self.book.running.items()):
            if run.owner != worker or run.stock or run.token is None or run.token == token:
                continue
            self._lose(trial_id, worker, f"AttemptLost: a new process took worker id {worker}; attempt "
                                        f"{run.attempt} was another's")
            self._check_finished()

    def _lease_of(self, worker: str) -> float:
        run = next((r for r in self.book.running.values() if r.owner == worker), None)
        return self.leases.stock_lease_seconds if run is not None and run.stock else self.leases.lease_seconds

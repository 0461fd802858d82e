"""Worker presence and trial leases: pure logic with an injectable clock.

Two clocks run per worker id, both fed by heartbeats:
- presence: an instance silent for `presence_seconds` is gone, so a new
  process may claim its id (a restarted container); while it is present, a
  second process asking for the same id is a duplicate and is refused.
- lease: an id silent for `lease_seconds` loses its running trial, which goes
  back to the queue for another worker. Time the chief itself could not hear
  (`deaf`: a long oracle call, during which heartbeats wait) does not count.
Stock KerasTuner clients send no heartbeat: each of their calls renews a lease of
`stock_lease_seconds` (`renew_stock`), long enough to cover an epoch between reports.
`presence()` tells the progress line, as a `Presence` record, how many ids hold a lease and
which ktcluster workers have been silent for longer than the caller allows.

A worker's instance is its per-process secret token (worker.client makes it at random; TLS keeps
it off the wire for others). Only its digest (`token_digest`) is written down: the journal's start
lines name who started each attempt, and a restarted chief grants the id back (`grant(claim=...)`)
to the one process that presents the token whose digest matches, for as long as a live holder
would keep it (presence, from when the chief serves again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time


def token_digest(token: str) -> str:
    """What may be written down about a worker's secret per-process token: a SHA-256 prefix."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class DuplicateWorker(RuntimeError):
    """Another live process already uses this worker id."""


@dataclasses.dataclass
class _Holder:
    instance: str | None  # None: granted by a restarted chief, claimable by the first to register
    seen: float
    info: str = ""
    deaf: float = 0.0  # seconds since `seen` during which the chief could not hear heartbeats
    lease: float | None = None  # None: the ktcluster lease
    claim: str | None = None  # granted at a restart: the digest of the only token that may claim it

    def admits(self, instance: str) -> bool:
        """`instance` holds this id, or may claim it now (restart-granted, with its token)."""
        if self.instance is not None:
            return self.instance == instance
        return self.claim is None or token_digest(instance) == self.claim


@dataclasses.dataclass(frozen=True)
class Presence:
    """The lease holders at one moment (`Leases.presence`)."""

    workers: int  # ids holding a lease: heard from lately, or silent but not yet expired
    silent: dict[str, float]  # worker -> seconds it has not been heard, for those past the threshold


STOCK = "stock KerasTuner client"  # the instance of ids held by stock clients


class Leases:
    def __init__(self, lease_seconds: float, presence_seconds: float, clock=time.monotonic,
                 stock_lease_seconds: float = 0.0):
        self.lease_seconds, self.stock_lease_seconds = lease_seconds, stock_lease_seconds
        self.presence_seconds = min(presence_seconds, lease_seconds)
        self.clock = clock
        self._holders: dict[str, _Holder] = {}
        self.expired_count = 0  # ids whose lease ran out since the chief started (chief.metrics)

    def register(self, worker: str, instance: str, info: str = "") -> bool:
        """Bind `worker` to `instance`; True if it was already ours or free, raise DuplicateWorker
        if another instance holds it and is still present (an id a restarted chief keeps for the
        process that ran its trial counts as present from when the chief serves). The message
        never quotes the holder's token."""
        now = self.clock()
        holder = self._holders.get(worker)
        if holder and not holder.admits(instance) and now - holder.seen < self.presence_seconds:
            who = holder.info or ("the process that ran its trial before the chief restarted"
                                  if holder.instance is None else "another process")
            raise DuplicateWorker(
                f"worker id {worker!r} is already used by a live worker ({who}); "
                "give each worker its own KERASTUNER_TUNER_ID")
        self._holders[worker] = _Holder(instance, now, info)
        return True

    def beat(self, worker: str, instance: str) -> bool:
        """Renew; False when `instance` does not hold `worker` (it must register again)."""
        holder = self._holders.get(worker)
        if holder is None or not holder.admits(instance):
            return False
        holder.instance, holder.seen, holder.deaf, holder.claim = instance, self.clock(), 0.0, None
        return True

    def renew_stock(self, worker: str) -> None:
        """A call from a stock client using `worker`: claim or renew its lease; DuplicateWorker if
        a present ktcluster worker holds that id."""
        now = self.clock()
        holder = self._holders.get(worker)
        free = holder is None or holder.instance == STOCK or (holder.instance is None and holder.claim is None)
        if not free and now - holder.seen < self.presence_seconds:
            raise DuplicateWorker(f"worker id {worker!r} is already used by a live ktcluster worker "
                                  f"({holder.info or 'another process'}); give the stock client another tuner id")
        self._holders[worker] = _Holder(STOCK, now, STOCK, lease=self.stock_lease_seconds)

    def holds(self, worker: str, instance: str | None) -> bool:
        holder = self._holders.get(worker)
        return holder is not None and (instance is None or holder.admits(instance))

    def grant(self, worker: str, claim: str | None = None) -> None:
        """A restarted chief gives previous trial owners a fresh lease to come back within;
        `claim`: the digest of the token the owner's process must present (None: journals from
        before tokens, claimable by the first process to call)."""
        self._holders.setdefault(worker, _Holder(None, self.clock(), claim=claim))

    def restart_granted(self) -> list[str]:
        """The chief now answers: every lease granted at the restart and not yet claimed runs
        from now (start-up work before serving must not use it up). Returns those worker ids."""
        unclaimed = [w for w, h in self._holders.items() if h.instance is None]
        for worker in unclaimed:
            self._holders[worker].seen, self._holders[worker].deaf = self.clock(), 0.0
        return unclaimed

    def deaf(self, seconds: float) -> None:
        """The chief could not hear heartbeats for `seconds` (they waited behind a long oracle
        call): no lease runs out for that time. Presence still does: a process that died meanwhile
        may be replaced as soon as it would have been."""
        for holder in self._holders.values():
            holder.deaf += seconds

    def expired(self) -> list[str]:
        """Worker ids silent for longer than the lease, not counting the time the chief was deaf
        (oldest first); they are forgotten."""
        now = self.clock()
        gone = sorted((h.seen, w) for w, h in self._holders.items()
                      if now - h.seen - h.deaf >= (h.lease or self.lease_seconds))
        for _, worker in gone:
            del self._holders[worker]
        self.expired_count += len(gone)
        return [worker for _, worker in gone]

    def presence(self, silent_after: float) -> Presence:
        """How many ids hold a lease, and the ktcluster workers not heard for more than
        `silent_after` seconds (callers pass a few heartbeat intervals: one late beat is noise).
        Time the chief was deaf does not count, as for leases. Stock clients are never listed:
        they send no heartbeats, only calls an epoch or more apart."""
        now = self.clock()
        quiet = {w: now - h.seen - h.deaf for w, h in self._holders.items() if h.instance != STOCK}
        return Presence(len(self._holders), {w: s for w, s in quiet.items() if s > silent_after})

"""The worker's line to the chief: dialling, and calls retried with back-off across an outage.

`ChannelMixin._call` retries a call that found no chief (UNAVAILABLE, DEADLINE_EXCEEDED) until
KTC_CHIEF_TIMEOUT_SECONDS have passed (then ChiefUnreachable). Between tries it waits with capped
exponential back-off and jitter (`Backoff`), also when the chief answers (a chief whose state disk
refuses writes answers UNAVAILABLE at once, and the channel is ready at once: a wait for the
channel alone never paused, and each worker retried thousands of times a second). A chief that
comes up during a wait is called at once. The retry line is logged at most once per cause
(status code) per LOG_WINDOW seconds, with the count of tries since.

It stops waiting for a chief that will not come: one that recorded a failed start
(shared.layout.ChiefFailureWatch; ChiefFailed with its code and reason), one that speaks the other
protocol (TLS on one side only: a single `shared.tls.speaks_tls` probe once the chief's port
answers; TLSMismatch), or a finished search (SearchFinished).
"""

from __future__ import annotations

import logging
import random
import time

import grpc
from keras_tuner import errors as kt_errors

from shared import layout, rpc, tls
from shared.logs import OncePerWindow

log = logging.getLogger("ktcluster.worker")
RETRY_BACKOFF = (0.5, 5.0)  # first and largest pause between calls that found no chief, seconds
LOG_WINDOW = 30.0  # seconds: at most one "chief unreachable" line per cause per window
READY_AT_ONCE = 0.05  # seconds: a channel ready this soon was ready all along (the chief answers)
# gRPC's own reconnection while the chief is not up (workers usually start first, and a chief may
# restart): its defaults (first retry after 1 s, growing to 120 s) leave a worker idle for up to
# a second after a quick chief comes up, and for minutes after a slow one (a first MNIST download).
# A refused connection costs next to nothing, so retry from 0.1 s, growing to 2 s.
RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000))
# A chief that Swarm or Kubernetes reschedules comes back under the same name at a new address,
# and its name does not resolve in between. After failed lookups gRPC backs off (up to 2 minutes)
# and ignores requests to look again: a channel that saw the name fail for 30 s found the chief
# 13 s after it was back, past the lease the restarted chief keeps a trial for; and a channel
# still connecting to the old address waits for that attempt to time out. So a chief that did not
# answer is dialled anew (a fresh lookup and connection), at most this often, seconds:
REDIAL_SECONDS = 2.0


class ChiefUnreachable(kt_errors.FatalError):
    """Fatal: KerasTuner must not turn it into a failed trial; the worker exits."""


class TLSMismatch(kt_errors.FatalError):
    """Fatal: the chief answered, but the TLS handshake failed on certificates or protocol
    (another CA, TLS on one side only): a set-up error that waiting cannot fix."""


class DuplicateWorkerId(kt_errors.FatalError):
    pass


class SettingsMismatch(kt_errors.FatalError):
    """Fatal: the chief refused this worker at Register because its settings or model differ
    (the message names each difference); the worker exits 2."""


class ChiefFailed(kt_errors.FatalError):
    """Fatal: the chief recorded that it could not start (shared.layout.ChiefFailure): `code` is
    its exit code, the message quotes its reason."""

    def __init__(self, failure: layout.ChiefFailure):
        super().__init__(f"the chief could not start (it exited {failure.code}): {failure.reason}")
        self.code = failure.code


class SearchFinished(kt_errors.FatalError):
    """Fatal (ends `search`): the chief is gone and its finished marker, written since this worker
    started (shared.layout.FinishedWatch), says the search is over."""


class Backoff:
    """Capped exponential back-off with jitter: the n-th `next()` is drawn from [d/2, d] where
    d = first * 2**n, at most `cap` ("equal jitter": workers that lost the chief together do not
    call back in step). `rand` is injectable (default random.random)."""

    def __init__(self, first: float = RETRY_BACKOFF[0], cap: float = RETRY_BACKOFF[1], rand=random.random):
        self.first, self.cap, self.rand = first, cap, rand
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay * (0.5 + 0.5 * self.rand())


class ChannelMixin:
    """Dialling and retried calls, for worker.client.OracleClient (which provides `address`,
    `tuner_id`, `timeout`, `project_state_dir`, `_tls_dir`, `_chief_failure`, `_stopping`,
    `_metadata`)."""

    _protocol_known = False  # a speaks_tls probe reached the chief (probed until one does)

    def _dial(self) -> None:
        """A new channel to the chief (a fresh name lookup) and its stubs. The channel it
        replaces is not closed: that would cancel calls in flight on it; it closes once unused."""
        channel = tls.channel(self.address, self._tls_dir, options=RECONNECT)
        self._channel, self._dialled = channel, time.monotonic()
        self.stub, self.cluster = rpc.ORACLE_GRPC.OracleStub(channel), rpc.ClusterStub(channel)

    def _redial(self) -> None:
        """The chief was unreachable: dial anew, unless that was done under REDIAL_SECONDS ago."""
        with self._dial_lock:
            if time.monotonic() - self._dialled >= REDIAL_SECONDS:
                self._dial()

    def _hint(self, exc: grpc.RpcError) -> str:
        """A plaintext worker's connections to a chief serving TLS are closed at once."""
        closed = "socket closed" in (exc.details() or "").lower()
        return " (or it serves TLS: set KTC_TLS_DIR here too)" if closed and not self._tls_dir else ""

    def _check_setup(self, exc: grpc.RpcError) -> None:
        """Raise TLSMismatch if a call that found no chief failed because the two sides' TLS
        set-ups differ: gRPC's details name a failed handshake (another CA; TLS against
        plaintext), or, as those details vary (a plaintext client's connection to a TLS server
        ends as "Socket closed" or "Connection reset by peer" depending on timing and network),
        one probe of the chief's port says it speaks the other protocol."""
        problem = tls.setup_error(exc.details())
        if problem:
            problem = f"the TLS handshake with the chief at {self.address} failed ({problem})"
        elif exc.code() == grpc.StatusCode.UNAVAILABLE and not self._protocol_known:
            serves_tls = tls.speaks_tls(self.address, timeout=1.0)
            self._protocol_known = serves_tls is not None
            if serves_tls is not None:
                problem = tls.protocol_mismatch(self.address, self._tls_dir, serves_tls)
        if problem:
            raise TLSMismatch(f"{problem}: the chief and every worker need KTC_TLS_DIR, with files of one set "
                              "(python -m shared.tls make DIR)") from None

    def _method(self, name: str):
        return getattr(self.cluster, name) if name in rpc.METHODS else getattr(self.stub, name)

    def _pause(self, delay: float) -> None:
        """Wait `delay` seconds before the next try, or less if the chief comes up meanwhile (its
        channel turns ready after the wait began; one ready at once means the chief answered and
        refused, so the whole delay is waited). The wait is cut in slices of REDIAL_SECONDS with
        a fresh dial between them, so a rescheduled chief whose name resolves again is found
        within a slice, not after the whole delay."""
        end = time.monotonic() + delay
        first = True
        while not self._stopping.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            started = time.monotonic()
            ready = grpc.channel_ready_future(self._channel)
            try:
                ready.result(timeout=min(left, REDIAL_SECONDS))
            except grpc.FutureTimeoutError:
                ready.cancel()  # else it keeps watching (and holding) the channel
                self._redial()
                first = False
                continue
            if first and time.monotonic() - started < READY_AT_ONCE:
                self._stopping.wait(max(end - time.monotonic(), 0))
            return

    def _retry_line(self, code: grpc.StatusCode, details: str, delay: float) -> None:
        tries = self._retry_lines.allow(code.name)
        if tries:
            since = f"; {tries - 1} more tries since the last such line" if tries > 1 else ""
            log.warning("%s: chief unreachable (%s: %s), retrying with back-off (next in %.1fs, at most %.0fs "
                        "apart)%s", self.tuner_id, code.name, " ".join((details or "").split())[:160], delay,
                        RETRY_BACKOFF[1], since)

    def _call(self, name: str, request, metadata=()):
        """RPC `name` (of KerasTuner's Oracle service or ours), retried across a chief outage for
        at most `timeout` seconds in all."""
        deadline = time.monotonic() + self.timeout
        backoff = Backoff()
        while True:
            left = deadline - time.monotonic()
            try:  # not wait_for_ready: a chief that is down answers UNAVAILABLE at once, so the
                # finished marker is looked at between tries
                return self._method(name).with_call(request, timeout=max(left, 0.001),
                                                    metadata=self._metadata + tuple(metadata))
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    raise DuplicateWorkerId(exc.details()) from None
                retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retryable or self._stopping.is_set():
                    raise
                self._check_setup(exc)
                if layout.finished_watch(self.project_state_dir).final():
                    raise SearchFinished(f"chief at {self.address} unreachable ({code.name}) and the "
                                         "search is marked finished") from None
                failure = self._chief_failure.check()
                if failure is not None:
                    raise ChiefFailed(failure) from None
                delay = backoff.next()
                if deadline - time.monotonic() <= delay:
                    raise ChiefUnreachable(
                        f"chief at {self.address} unreachable for {self.timeout:.0f}s "
                        f"(KTC_CHIEF_TIMEOUT_SECONDS); it is gone or never started{self._hint(exc)}") from None
                self._retry_line(code, exc.details(), delay)
                self._redial()
                self._pause(delay)


def new_retry_lines() -> OncePerWindow:
    """The rate limit of a client's "chief unreachable" lines."""
    return OncePerWindow(LOG_WINDOW)

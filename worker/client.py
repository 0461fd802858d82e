"""The worker's side of the chief's protocol: bounded waits, identity, heartbeats.

Stock `OracleClient` waits up to an hour on every call, asks again at once
when told IDLE and never says who it is. This client:
- rides out a chief outage: every call retries with capped back-off and jitter until
  KTC_CHIEF_TIMEOUT_SECONDS have passed, then raises ChiefUnreachable (worker.channel);
- registers its worker id with a per-process instance id, a random secret token: only this
  process may go on with the attempts it starts, also after a chief restart (a live duplicate
  is refused with DuplicateWorkerId); it sends its settings fingerprint (shared.fingerprint), and
  a chief whose settings differ refuses it (SettingsMismatch, naming each difference); it sends
  heartbeats from a thread, so a long epoch never looks like a dead worker;
- sends its id and a failed trial's message as metadata, learns each trial's
  attempt number from the chief and sends it back on UpdateTrial and EndTrial;
- learns from heartbeat replies (`attempts`, `finished`) or a FAILED_PRECONDITION
  answer that an attempt was taken away: `is_lost(trial_id)` turns True, nothing more
  is sent for it (UpdateTrial raises AttemptLost, EndTrial is skipped);
- ends the search without waiting on a chief it no longer needs: after a heartbeat
  said `finished`, or when the chief is unreachable and the finished marker was written
  since this worker started (shared.layout.FinishedWatch; SearchFinished, at once);
- stops waiting for a chief that will not come (worker.channel: ChiefFailed, TLSMismatch), each
  within a retry or two instead of KTC_CHIEF_TIMEOUT_SECONDS;
- turns a progress report the chief refuses as malformed (INVALID_ARGUMENT: a NaN or infinite
  metric) into ReportRefused, whose one line is the chief's reason: the failed trial says why.

By concern: the channel, its redial and bounded retries in worker.channel; registration and
heartbeats in worker.heartbeats; the ledger of running attempts in worker.attempts; the
protocol's calls here.

Private KerasTuner names used here: `OracleClient._oracle` (the local oracle the stock
client wraps; we set it the same way so inherited code finds it).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading

import grpc
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module
from keras_tuner.src.distribute import oracle_client  # the stock client: no public import path

from shared import layout, rpc
from worker.attempts import Attempt, AttemptLedger
from worker.channel import (ChannelMixin, ChiefFailed, ChiefUnreachable, DuplicateWorkerId, SearchFinished,
                            SettingsMismatch, TLSMismatch, new_retry_lines)
from worker.heartbeats import HeartbeatsMixin

__all__ = ["OracleClient", "Attempt", "AttemptLost", "ReportRefused", "ChiefFailed", "ChiefUnreachable",
           "DuplicateWorkerId", "SearchFinished", "SettingsMismatch", "TLSMismatch"]

log = logging.getLogger("ktcluster.worker")
service = rpc.ORACLE_MESSAGES
# First and largest pause between IDLE answers, seconds. IDLE mostly comes at the end of a
# search (the last trials run elsewhere) and the chief waits for every worker to hear STOPPED,
# so the first pauses are short (longer ones delayed the end of every search).
IDLE_BACKOFF = (0.1, 5.0)


class ReportRefused(RuntimeError):
    """The chief refused a progress report as malformed (INVALID_ARGUMENT, e.g. a NaN or infinite
    metric); the message is its one-line reason. A plain error: KerasTuner fails the attempt with it."""


class AttemptLost(RuntimeError):
    """This worker's attempt at a trial was taken away; nothing more may be written or sent for it.

    A plain error on purpose: KerasTuner ends the trial locally, and `end_trial` then sends nothing."""


def _stopped() -> trial_module.Trial:
    return trial_module.Trial(hyperparameters=None, status=trial_module.TrialStatus.STOPPED)


class OracleClient(ChannelMixin, HeartbeatsMixin, oracle_client.OracleClient):
    """Drop-in for keras_tuner's OracleClient (a subclass, so Tuner code that checks for it works)."""

    def __init__(self, local_oracle, address: str, tuner_id: str, timeout: float, project_state_dir: str,
                 tls_dir: str = ""):
        self._oracle = local_oracle  # for objective & co. only; never asked for trials
        self.address, self.tuner_id, self.timeout, self._tls_dir = address, tuner_id, timeout, tls_dir
        self._dial_lock = threading.Lock()
        self._dial()  # TLSError if KTC_TLS_DIR is unusable
        self.project_state_dir = project_state_dir
        self._chief_failure = layout.chief_failure_watch(project_state_dir)
        layout.finished_watch(project_state_dir)  # "finished" counts only if written after this (or the worker's start)
        self._protocol_known = False  # a speaks_tls probe reached the chief (probed until one does)
        self._retry_lines = new_retry_lines()
        self.instance = secrets.token_hex(16)  # this process's secret token: never logged
        self.fingerprint: dict | None = None  # sent with every Register (shared.fingerprint)
        self.multi_worker, self.should_report = False, True
        self.heartbeat_seconds = 1.0  # the chief's value replaces it at register()
        self.attempts = AttemptLedger()  # the attempts this process runs
        self._idle_pause = IDLE_BACKOFF[0]
        self._stopping = threading.Event()
        self.finished = threading.Event()  # a heartbeat said the search is over
        self._heartbeats: threading.Thread | None = None
        self._metadata = ((rpc.WORKER_KEY, tuner_id), (rpc.INSTANCE_KEY, self.instance))

    # -- attempts ------------------------------------------------------------------------
    def attempt_of(self, trial_id: str) -> int | None:
        """The attempt number this process runs for `trial_id`, None if it runs none."""
        return self.attempts.number(trial_id)

    def is_lost(self, trial_id: str) -> bool:
        """True once the chief said our attempt at `trial_id` is no longer ours."""
        return self.attempts.is_lost(trial_id)

    def _lose(self, trial_id: str, why: str) -> None:
        number = self.attempts.lose(trial_id)
        if number is not None:
            log.warning("%s: trial %s attempt %d is no longer ours (%s): stopping it, sending nothing more for it",
                        self.tuner_id, trial_id, number, why)

    def _attempt_metadata(self, trial_id: str) -> tuple:
        number = self.attempt_of(trial_id)
        return ((rpc.ATTEMPT_KEY, str(number)),) if number is not None else ()

    @property
    def objective(self):
        return self._oracle.objective

    @property
    def max_trials(self):
        return self._oracle.max_trials

    # -- KerasTuner's Oracle protocol ----------------------------------------------------
    def get_space(self):
        response, _ = self._call("GetSpace", service.GetSpaceRequest())
        return hp_module.HyperParameters.from_proto(response.hyperparameters)

    def update_space(self, hyperparameters):
        self._call("UpdateSpace", service.UpdateSpaceRequest(hyperparameters=hyperparameters.to_proto()))

    def create_trial(self, tuner_id):
        """The next trial. After the search was said to be over: one quick try (so the chief
        hears us), and STOPPED if the chief no longer answers."""
        request = service.CreateTrialRequest(tuner_id=tuner_id)
        if self.finished.is_set():
            try:
                response, call = self.stub.CreateTrial.with_call(
                    request, timeout=self.heartbeat_seconds, metadata=self._metadata)
            except grpc.RpcError:
                return _stopped()
        else:
            response, call = self._call("CreateTrial", request)
        trial = trial_module.Trial.from_proto(response.trial)
        if trial.status == trial_module.TrialStatus.IDLE and self.finished.is_set():
            return _stopped()  # nothing left to wait for
        trailing = dict(call.trailing_metadata() or ())
        if trial.status == trial_module.TrialStatus.RUNNING:
            self.attempts.start(trial.trial_id, int(trailing.get(rpc.ATTEMPT_KEY, 1) or 1))
        if trial.status == trial_module.TrialStatus.IDLE:  # others' trials must finish first
            self.finished.wait(self._idle_pause)  # a heartbeat saying `finished` ends the pause
            self._idle_pause = min(self._idle_pause * 2, IDLE_BACKOFF[1])
        else:
            self._idle_pause = IDLE_BACKOFF[0]
        return trial

    def update_trial(self, trial_id, metrics, step=0):
        """Report a result. Raises AttemptLost (sending nothing) for a lost attempt, and when the
        chief answers FAILED_PRECONDITION (we are not the current owner of the current attempt)."""
        if self.is_lost(trial_id):
            raise AttemptLost(f"trial {trial_id}: attempt {self.attempt_of(trial_id)} was taken away")
        request = service.UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=step)
        try:
            response, _ = self._call("UpdateTrial", request, self._attempt_metadata(trial_id))
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:  # the reason first: tables cut long messages
                raise ReportRefused((exc.details() or "").split(" refused: ", 1)[-1]) from None
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            self._lose(trial_id, f"UpdateTrial refused: {exc.details()}")
            raise AttemptLost(f"trial {trial_id}: {exc.details()}") from None
        return trial_module.Trial.from_proto(response.trial)

    def end_trial(self, trial):
        """Report the end of our attempt; sends nothing for a lost one. FAILED_PRECONDITION
        (the attempt is no longer ours) marks it lost and returns: it is no failure of ours."""
        trial_id = trial.trial_id
        used = self.attempts.used(trial_id)
        try:
            if self.is_lost(trial_id):
                return
            message = (trial.message or "").encode("utf-8")[-16000:]
            metadata = ((rpc.USED_KEY, json.dumps(used)),) + self._attempt_metadata(trial_id)
            if message:
                metadata += ((rpc.MESSAGE_KEY, message),)
            try:
                self._call("EndTrial", service.EndTrialRequest(trial=trial.to_proto()), metadata=metadata)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                self._lose(trial_id, f"EndTrial refused: {exc.details()}")
        finally:
            self.attempts.forget(trial_id)

    def get_trial(self, trial_id):
        response, _ = self._call("GetTrial", service.GetTrialRequest(trial_id=trial_id))
        return trial_module.Trial.from_proto(response.trial)

    def get_best_trials(self, num_trials=1):
        response, _ = self._call("GetBestTrials", service.GetBestTrialsRequest(num_trials=num_trials))
        return [trial_module.Trial.from_proto(t) for t in response.trials]

    def close(self):
        self._stopping.set()
        if self._heartbeats is not None:
            self._heartbeats.join(timeout=5)
        self._channel.close()

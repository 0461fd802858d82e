"""The worker's side of the chief's protocol: bounded waits, identity, heartbeats.

Stock `OracleClient` waits up to an hour on every call, asks again at once
when told IDLE and never says who it is. This client:
- rides out a chief outage: every call retries with backoff until
  KTC_CHIEF_TIMEOUT_SECONDS have passed, then raises ChiefUnreachable;
- registers its worker id with a per-process instance id (a live duplicate is
  refused with DuplicateWorkerId) and sends heartbeats from a thread, so a
  long epoch never looks like a dead worker;
- sends its id and a failed trial's message as metadata, and learns each
  trial's attempt number from the chief.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid

import grpc
from keras_tuner.src import errors as kt_errors
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_client
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

from shared import rpc

log = logging.getLogger("ktcluster.worker")
service = protos.get_service()
# First and largest pause between IDLE answers, seconds. IDLE mostly comes at the end of a
# search (the last trials run elsewhere) and the chief waits for every worker to hear STOPPED,
# so the first pauses are short: from 0.5 s it cost ~1 s of wall time per search.
IDLE_BACKOFF = (0.1, 5.0)
RETRY_BACKOFF = (0.5, 5.0)  # first and largest pause between calls that found no chief
# gRPC's own reconnection while the chief is not up (workers usually start first, and a chief may
# restart): its defaults (first retry after 1 s, growing to 120 s) left a worker idle for up to
# ~1 s after a quick chief came up, and for minutes after a slow one (a first MNIST download).
# A refused connection costs next to nothing, so retry from 0.1 s, growing to 2 s.
RECONNECT = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000))


class ChiefUnreachable(kt_errors.FatalError):
    """Fatal: KerasTuner must not turn it into a failed trial; the worker exits."""


class DuplicateWorkerId(kt_errors.FatalError):
    pass


class OracleClient(oracle_client.OracleClient):
    """Drop-in for keras_tuner's OracleClient (a subclass, so Tuner code that checks for it works)."""

    def __init__(self, local_oracle, address: str, tuner_id: str, timeout: float):
        self._oracle = local_oracle  # for objective & co. only; never asked for trials
        self._channel = grpc.insecure_channel(address, options=RECONNECT)
        self.stub = protos.get_service_grpc().OracleStub(self._channel)
        self.cluster = rpc.ClusterStub(self._channel)
        self.address, self.tuner_id, self.timeout = address, tuner_id, timeout
        self.instance = uuid.uuid4().hex
        self.multi_worker, self.should_report = False, True
        self.attempts: dict[str, int] = {}
        self.used: dict[str, list[str]] = {}  # trial id -> hyperparameters its model was built with
        self._idle_pause = IDLE_BACKOFF[0]
        self._stopping = threading.Event()
        self._heartbeats: threading.Thread | None = None
        self._metadata = ((rpc.WORKER_KEY, tuner_id), (rpc.INSTANCE_KEY, self.instance))

    @property
    def objective(self):
        return self._oracle.objective

    @property
    def max_trials(self):
        return self._oracle.max_trials

    def _call(self, method, request, metadata=()):
        """One RPC, retried across a chief outage for at most `timeout` seconds in all."""
        deadline = time.monotonic() + self.timeout
        pause = RETRY_BACKOFF[0]
        while True:
            left = deadline - time.monotonic()
            try:
                return method.with_call(request, wait_for_ready=True, timeout=max(left, 0.001),
                                        metadata=self._metadata + tuple(metadata))
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.ALREADY_EXISTS:
                    raise DuplicateWorkerId(exc.details()) from None
                retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if not retryable or self._stopping.is_set():
                    raise
                if deadline - time.monotonic() <= pause:
                    raise ChiefUnreachable(
                        f"chief at {self.address} unreachable for {self.timeout:.0f}s "
                        "(KTC_CHIEF_TIMEOUT_SECONDS); it is gone or never started") from None
                log.warning("%s: chief unreachable (%s), retrying", self.tuner_id, code.name)
                self._stopping.wait(pause)
                pause = min(pause * 2, RETRY_BACKOFF[1])

    # -- ktcluster's service ------------------------------------------------------------
    def register(self, claim_seconds: float) -> dict:
        """Claim this worker id. A restarted worker may find its previous process still counted
        as present for a few heartbeats: it keeps asking for `claim_seconds`, then gives up."""
        info = f"{socket.gethostname()} pid {os.getpid()}"
        request = {"worker": self.tuner_id, "instance": self.instance, "info": info}
        give_up = time.monotonic() + claim_seconds
        while True:
            try:
                reply, _ = self._call(self.cluster.Register, request)
                break
            except DuplicateWorkerId:
                if time.monotonic() >= give_up:
                    raise
                self._stopping.wait(1.0)
        self.heartbeat_seconds = reply["heartbeat_seconds"]
        if self._heartbeats is None:
            self._heartbeats = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._heartbeats.start()
        return reply

    def _beat(self):
        request = {"worker": self.tuner_id, "instance": self.instance}
        while not self._stopping.wait(self.heartbeat_seconds):
            try:
                reply, _ = self.cluster.Heartbeat.with_call(request, timeout=self.heartbeat_seconds)
                if not reply.get("ok"):  # the chief restarted, or our lease lapsed: claim the id again
                    self.cluster.Register.with_call({**request, "info": "re-register"},
                                                    timeout=self.heartbeat_seconds)
            except grpc.RpcError as exc:  # an outage: the main thread's calls decide when to give up
                log.debug("heartbeat failed: %s", exc.code())

    # -- KerasTuner's Oracle protocol ----------------------------------------------------
    def get_space(self):
        response, _ = self._call(self.stub.GetSpace, service.GetSpaceRequest())
        return hp_module.HyperParameters.from_proto(response.hyperparameters)

    def update_space(self, hyperparameters):
        self._call(self.stub.UpdateSpace, service.UpdateSpaceRequest(hyperparameters=hyperparameters.to_proto()))

    def create_trial(self, tuner_id):
        response, call = self._call(self.stub.CreateTrial, service.CreateTrialRequest(tuner_id=tuner_id))
        trial = trial_module.Trial.from_proto(response.trial)
        trailing = dict(call.trailing_metadata() or ())
        if trial.status == trial_module.TrialStatus.RUNNING:
            self.attempts[trial.trial_id] = int(trailing.get(rpc.ATTEMPT_KEY, 1) or 1)
        if trial.status == trial_module.TrialStatus.IDLE:  # others' trials must finish first
            self._stopping.wait(self._idle_pause)
            self._idle_pause = min(self._idle_pause * 2, IDLE_BACKOFF[1])
        else:
            self._idle_pause = IDLE_BACKOFF[0]
        return trial

    def update_trial(self, trial_id, metrics, step=0):
        request = service.UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=step)
        response, _ = self._call(self.stub.UpdateTrial, request)
        return trial_module.Trial.from_proto(response.trial)

    def end_trial(self, trial):
        message = (trial.message or "").encode("utf-8")[-16000:]
        metadata = ((rpc.USED_KEY, json.dumps(self.used.pop(trial.trial_id, []))),)
        if message:
            metadata += ((rpc.MESSAGE_KEY, message),)
        self._call(self.stub.EndTrial, service.EndTrialRequest(trial=trial.to_proto()), metadata=metadata)

    def get_trial(self, trial_id):
        response, _ = self._call(self.stub.GetTrial, service.GetTrialRequest(trial_id=trial_id))
        return trial_module.Trial.from_proto(response.trial)

    def get_best_trials(self, num_trials=1):
        response, _ = self._call(self.stub.GetBestTrials, service.GetBestTrialsRequest(num_trials=num_trials))
        return [trial_module.Trial.from_proto(t) for t in response.trials]

    def close(self):
        self._stopping.set()
        if self._heartbeats is not None:
            self._heartbeats.join(timeout=5)
        self._channel.close()

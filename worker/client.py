"""The worker's side of KerasTuner's Oracle protocol, with bounded waits.

Stock `OracleClient` waits up to an hour on every call and asks again at once
when told IDLE. This client waits at most KTC_CHIEF_TIMEOUT_SECONDS for an
unreachable chief (then raises ChiefUnreachable, so the worker exits with a
clear message) and backs off between IDLE answers.
"""

from __future__ import annotations

import threading

import grpc
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_client
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

service = protos.get_service()
IDLE_BACKOFF = (0.5, 5.0)  # first and largest pause between IDLE answers, seconds


class ChiefUnreachable(RuntimeError):
    pass


class OracleClient(oracle_client.OracleClient):
    """Drop-in for keras_tuner's OracleClient (a subclass, so Tuner code that checks for it works)."""

    def __init__(self, local_oracle, address: str, tuner_id: str, timeout: float):
        self._oracle = local_oracle  # for objective & co. only; never asked for trials
        self._channel = grpc.insecure_channel(address)
        self.stub = protos.get_service_grpc().OracleStub(self._channel)
        self.address, self.tuner_id, self.timeout = address, tuner_id, timeout
        self.multi_worker, self.should_report = False, True
        self._idle_pause = IDLE_BACKOFF[0]
        self._stopping = threading.Event()

    @property
    def objective(self):
        return self._oracle.objective

    @property
    def max_trials(self):
        return self._oracle.max_trials

    def _call(self, method: str, request):
        try:
            return getattr(self.stub, method)(request, wait_for_ready=True, timeout=self.timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ChiefUnreachable(
                    f"chief at {self.address} unreachable for {self.timeout:.0f}s "
                    "(KTC_CHIEF_TIMEOUT_SECONDS); is the chief running?"
                ) from None
            raise

    def get_space(self):
        response = self._call("GetSpace", service.GetSpaceRequest())
        return hp_module.HyperParameters.from_proto(response.hyperparameters)

    def update_space(self, hyperparameters):
        self._call("UpdateSpace", service.UpdateSpaceRequest(hyperparameters=hyperparameters.to_proto()))

    def create_trial(self, tuner_id):
        trial = trial_module.Trial.from_proto(
            self._call("CreateTrial", service.CreateTrialRequest(tuner_id=tuner_id)).trial
        )
        if trial.status == trial_module.TrialStatus.IDLE:  # others' trials must finish first
            self._stopping.wait(self._idle_pause)
            self._idle_pause = min(self._idle_pause * 2, IDLE_BACKOFF[1])
        else:
            self._idle_pause = IDLE_BACKOFF[0]
        return trial

    def update_trial(self, trial_id, metrics, step=0):
        request = service.UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=step)
        return trial_module.Trial.from_proto(self._call("UpdateTrial", request).trial)

    def end_trial(self, trial):
        self._call("EndTrial", service.EndTrialRequest(trial=trial.to_proto()))

    def get_trial(self, trial_id):
        return trial_module.Trial.from_proto(self._call("GetTrial", service.GetTrialRequest(trial_id=trial_id)).trial)

    def get_best_trials(self, num_trials=1):
        response = self._call("GetBestTrials", service.GetBestTrialsRequest(num_trials=num_trials))
        return [trial_module.Trial.from_proto(t) for t in response.trials]

    def close(self):
        self._stopping.set()
        self._channel.close()

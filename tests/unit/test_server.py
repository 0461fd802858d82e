"""The chief's gRPC servicer over real gRPC: a report that echoes the trial it was sent reuses
what the chief already holds; one that changed it takes KerasTuner's own parse."""

import gc

import grpc
import pytest
from keras_tuner.src import protos
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

from chief.coordinator import Coordinator
from chief.server import InProcessContext, OracleServicer, bind, serve, trial_proto
from tests.unit.test_coordinator import Clock, finish, make_oracle

service = protos.get_service()
COMPLETED = protos.get_proto().TrialStatus.COMPLETED


@pytest.fixture
def chief(tmp_path):
    """(coordinator, stub) for a chief serving on a port the OS picked."""
    threshold = gc.get_threshold()
    coordinator = Coordinator(make_oracle(tmp_path, max_trials=5), lease_seconds=10, heartbeat_seconds=1)
    server, port = bind("127.0.0.1:0")
    serve(server, coordinator)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield coordinator, protos.get_service_grpc().OracleStub(channel)
    finally:
        channel.close()
        server.stop(grace=None).wait(10)
        coordinator.close()
        gc.unfreeze()  # serve() froze this test process's heap
        gc.set_threshold(*threshold)


@pytest.fixture
def parses(monkeypatch):
    """Counts KerasTuner's HyperParameters.from_proto calls."""
    calls = []
    real = hp_module.HyperParameters.from_proto.__func__

    def counting(cls, proto):
        calls.append(proto)
        return real(cls, proto)

    monkeypatch.setattr(hp_module.HyperParameters, "from_proto", classmethod(counting))
    return calls


def test_trial_proto_is_keras_tuners_own_encoding():
    hp = hp_module.HyperParameters()
    hp.Int("x", 0, 10)
    hp.Choice("c", ["a", "b"])
    trial = trial_module.Trial(hp, trial_id="3", status="RUNNING")
    assert trial_proto(trial, hp.to_proto()) == trial.to_proto()
    trial.metrics.register("score", "max")
    trial.metrics.update("score", 0.5, step=0)
    trial.metrics.update("score", 0.75, step=1)
    trial.status, trial.score, trial.best_step = "COMPLETED", 0.75, 1
    assert trial_proto(trial, hp.to_proto()) == trial.to_proto()


def test_an_echoed_result_is_not_parsed_again(chief, parses):
    coordinator, stub = chief
    trial = stub.CreateTrial(service.CreateTrialRequest(tuner_id="w1")).trial
    reply = stub.UpdateTrial(service.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"score": 0.5})).trial
    assert reply.hyperparameters == trial.hyperparameters and reply.metrics.metrics["score"].observations
    trial.status = COMPLETED
    stub.EndTrial(service.EndTrialRequest(trial=trial))
    assert parses == []
    ended = coordinator.get_trial(trial.trial_id)
    assert ended.status == "COMPLETED" and ended.score == 0.5
    assert ended.hyperparameters.values == trial_module.Trial.from_proto(trial).hyperparameters.values


def test_a_result_whose_build_added_hyperparameters_grows_the_space(chief, parses):
    """The worker's build registered a new hyperparameter: the chief must learn it (stock's
    end_trial merges the trial's space), so this report is parsed in full."""
    coordinator, stub = chief
    proto = stub.CreateTrial(service.CreateTrialRequest(tuner_id="w1")).trial
    stub.UpdateTrial(service.UpdateTrialRequest(trial_id=proto.trial_id, metrics={"score": 0.5}))
    trial = trial_module.Trial.from_proto(proto)
    trial.hyperparameters.Int("layers", 1, 4)  # as a build does
    trial.status = "COMPLETED"
    parses.clear()
    stub.EndTrial(service.EndTrialRequest(trial=trial.to_proto()))
    assert len(parses) == 1
    assert "layers" in {hp.name for hp in coordinator.get_space().space}
    assert coordinator.get_trial(proto.trial_id).hyperparameters.values["layers"] == 1


def test_trials_lost_with_their_workers_leave_nothing_behind(tmp_path):
    """A trial whose worker vanished (lease expired, no retry left) never sends a result, so the
    servicer's table of what it sent must be swept, or it grows by one entry per such trial."""
    clock, oracle = Clock(), make_oracle(tmp_path, max_trials=1000, retries=0)
    space = oracle.get_space()
    space.Float("y", 0.0, 1.0)  # room for hundreds of distinct trials
    oracle.update_space(space)
    coordinator = Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1, clock=clock)
    servicer = OracleServicer(coordinator)
    try:
        for n in range(300):
            done, lost = f"done-{n}", f"lost-{n}"  # a completed trial between losses: no failure streak
            trial = servicer.CreateTrial(service.CreateTrialRequest(tuner_id=done), InProcessContext(done)).trial
            finish(coordinator, coordinator.get_trial(trial.trial_id), done)
            servicer.CreateTrial(service.CreateTrialRequest(tuner_id=lost), InProcessContext(lost))
            clock.now += 11
            assert len(coordinator.expire_leases()) == 1
        assert coordinator.progress()["failed"] == 300 and not coordinator.running_trial_ids()
        assert len(servicer._sent) < OracleServicer.SWEEP_MIN
    finally:
        coordinator.close()

"""The chief's gRPC servicer over real gRPC: KerasTuner's Oracle protocol with ktcluster's
metadata, and every refusal answered with its status code and one line."""

import json

import grpc
import pytest
from keras_tuner.src import protos
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module

from chief.coordinator import Coordinator
from shared import rpc
from tests.unit.test_coordinator import make_oracle
from tests.wire import serving

service = protos.get_service()
TrialStatus = protos.get_proto().TrialStatus


@pytest.fixture
def chief(tmp_path):
    """(coordinator, Oracle stub, Cluster stub, channel) for a chief serving on a port the OS picked."""
    coordinator = Coordinator(make_oracle(tmp_path, max_trials=5), lease_seconds=10, heartbeat_seconds=1)
    with serving(coordinator) as (stub, cluster, channel):
        yield coordinator, stub, cluster, channel


def ids(worker, attempt=None, message=None, used=None):
    """A ktcluster worker's metadata."""
    metadata = [(rpc.WORKER_KEY, worker), (rpc.INSTANCE_KEY, f"{worker}-pid")]
    if attempt is not None:
        metadata.append((rpc.ATTEMPT_KEY, str(attempt)))
    if message is not None:
        metadata.append((rpc.MESSAGE_KEY, message.encode()))
    if used is not None:
        metadata.append((rpc.USED_KEY, json.dumps(used)))
    return metadata


def refused(call, *args, **kwargs) -> tuple:
    with pytest.raises(grpc.RpcError) as failure:
        call(*args, **kwargs)
    return failure.value.code(), failure.value.details()


def test_a_worker_runs_a_trial_to_its_end(chief):
    coordinator, stub, cluster, _ = chief
    assert cluster.Register({"worker": "w1", "instance": "w1-pid", "info": "test"})["lease_seconds"] == 10
    reply, call = stub.CreateTrial.with_call(service.CreateTrialRequest(tuner_id="w1"), metadata=ids("w1"))
    trial = reply.trial
    assert dict(call.trailing_metadata())[rpc.ATTEMPT_KEY] == "1"
    assert cluster.Heartbeat({"worker": "w1", "instance": "w1-pid"}) == {
        "ok": True, "attempts": {trial.trial_id: 1}, "finished": False}
    stub.UpdateTrial(service.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"score": 0.5}),
                     metadata=ids("w1", 1))
    trial.status = TrialStatus.COMPLETED
    request = service.EndTrialRequest(trial=trial)
    stub.EndTrial(request, metadata=ids("w1", 1, used=["x"]))
    stub.EndTrial(request, metadata=ids("w1", 1, used=["x"]))  # a retry after a lost reply: acknowledged
    ended = coordinator.get_trial(trial.trial_id)
    assert (ended.status, ended.score) == ("COMPLETED", 0.5)
    assert coordinator.book.runs[trial.trial_id].used == ["x"] and coordinator.book.runs[trial.trial_id].ended == 1


def test_a_result_whose_build_added_hyperparameters_grows_the_space(chief):
    """The worker's build registered a new hyperparameter: the chief learns it (stock's end_trial
    merges the trial's space)."""
    coordinator, stub, _, _ = chief
    proto = stub.CreateTrial(service.CreateTrialRequest(tuner_id="w1"), metadata=ids("w1")).trial
    stub.UpdateTrial(service.UpdateTrialRequest(trial_id=proto.trial_id, metrics={"score": 0.5}), metadata=ids("w1"))
    trial = trial_module.Trial.from_proto(proto)
    trial.hyperparameters.Int("layers", 1, 4)  # as a build does
    trial.status = "COMPLETED"
    stub.EndTrial(service.EndTrialRequest(trial=trial.to_proto()), metadata=ids("w1", 1))
    assert "layers" in {hp.name for hp in coordinator.get_space().space}
    assert coordinator.get_trial(proto.trial_id).hyperparameters.values["layers"] == 1


def test_oracle_calls_are_refused_with_their_status_codes(chief):
    coordinator, stub, _, _ = chief
    code, details = refused(stub.CreateTrial, service.CreateTrialRequest(tuner_id="tuner0"))  # a stock client
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "KTC_STOCK_LEASE_SECONDS" in details
    for tuner_id in ("", "chief-2", "w" * 65, "w 1", "-w"):
        code, details = refused(stub.CreateTrial, service.CreateTrialRequest(tuner_id=tuner_id), metadata=ids("w1"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "\n" not in details, tuner_id
    assert not coordinator.oracle.trials  # nothing handed out to any of them

    trial = stub.CreateTrial(service.CreateTrialRequest(tuner_id="w1"), metadata=ids("w1")).trial
    report = service.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"score": 0.5})
    assert refused(stub.UpdateTrial, report, metadata=ids("w2"))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert refused(stub.UpdateTrial, report, metadata=ids("w1", 2))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert refused(stub.UpdateTrial, report, metadata=ids("w1", "x"))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert refused(stub.UpdateTrial, report, metadata=[(rpc.WORKER_KEY, "w1")])[0] == grpc.StatusCode.INVALID_ARGUMENT
    unknown = service.UpdateTrialRequest(trial_id="77", metrics={"score": 0.5})
    assert refused(stub.UpdateTrial, unknown, metadata=ids("w1"))[0] == grpc.StatusCode.NOT_FOUND
    no_objective = service.UpdateTrialRequest(trial_id=trial.trial_id, metrics={"loss": 0.5})
    assert refused(stub.UpdateTrial, no_objective, metadata=ids("w1"))[0] == grpc.StatusCode.INVALID_ARGUMENT

    for status in (TrialStatus.RUNNING, TrialStatus.IDLE, TrialStatus.STOPPED, TrialStatus.UNKNOWN):
        trial.status = status
        code, details = refused(stub.EndTrial, service.EndTrialRequest(trial=trial), metadata=ids("w1", 1))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "must end COMPLETED, FAILED or INVALID" in details
    trial.status = TrialStatus.FAILED
    for metadata in ((), ids("w2"), ids("w1", 2)):  # nobody but attempt 1 of w1
        code, details = refused(stub.EndTrial, service.EndTrialRequest(trial=trial), metadata=metadata)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "refused" in details
    assert coordinator.get_trial(trial.trial_id).status == "RUNNING"
    bad_used = ids("w1", 1) + [(rpc.USED_KEY, "{not a list")]
    assert refused(stub.EndTrial, service.EndTrialRequest(trial=trial), metadata=bad_used)[0] == (
        grpc.StatusCode.INVALID_ARGUMENT)
    stub.EndTrial(service.EndTrialRequest(trial=trial), metadata=ids("w1", 1, message="ValueError: bad"))
    assert coordinator.book.runs[trial.trial_id].message == "ValueError: bad"


def test_update_space_is_refused_to_strangers_and_insane_spaces(chief):
    coordinator, stub, cluster, _ = chief
    hp = hp_module.HyperParameters()
    hp.Int("y", 0, 3)
    request = service.UpdateSpaceRequest(hyperparameters=hp.to_proto())
    assert refused(stub.UpdateSpace, request)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert refused(stub.UpdateSpace, request, metadata=ids("w1"))[0] == grpc.StatusCode.PERMISSION_DENIED
    cluster.Register({"worker": "w1", "instance": "w1-pid"})
    nan = hp_module.HyperParameters()
    nan.Float("lr", float("nan"), 1.0)
    code, details = refused(stub.UpdateSpace, service.UpdateSpaceRequest(hyperparameters=nan.to_proto()),
                            metadata=ids("w1"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "not a finite number" in details
    assert [p.name for p in coordinator.get_space().space] == ["x"]
    stub.UpdateSpace(request, metadata=ids("w1"))
    assert [p.name for p in coordinator.get_space().space] == ["x", "y"]


def test_register_and_heartbeat_refuse_bad_payloads(chief):
    _, _, cluster, channel = chief
    raw = channel.unary_unary(f"/{rpc.SERVICE}/Register", request_serializer=lambda b: b,
                              response_deserializer=lambda b: b)
    for payload in (b"not json", b"null", b"\xff"):
        code, details = refused(raw, payload)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "must be a JSON object" in details, payload
    for payload in ([1], {}, {"worker": 5, "instance": "i"}, {"worker": "w1"}, {"worker": "w1", "instance": ""},
                    {"worker": "chief", "instance": "i"}):
        code, details = refused(cluster.Register, payload)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown trial" not in details, payload
        assert refused(cluster.Heartbeat, payload)[0] == grpc.StatusCode.INVALID_ARGUMENT, payload
    assert refused(cluster.Register, {"worker": "w1", "instance": "i", "info": 7})[0] == (
        grpc.StatusCode.INVALID_ARGUMENT)
    cluster.Register({"worker": "w1", "instance": "a"})
    assert refused(cluster.Register, {"worker": "w1", "instance": "b"})[0] == grpc.StatusCode.ALREADY_EXISTS
    assert cluster.Heartbeat({"worker": "w1", "instance": "b"})["ok"] is False


def test_a_chief_that_cannot_store_answers_unavailable(chief, monkeypatch):
    from tests.unit.test_journal import FailingWrites

    coordinator, stub, _, _ = chief
    FailingWrites(monkeypatch, coordinator.journal, writes=2)
    code, details = refused(stub.CreateTrial, service.CreateTrialRequest(tuner_id="w1"), metadata=ids("w1"))
    assert code == grpc.StatusCode.UNAVAILABLE and "retry" in details
    assert refused(stub.CreateTrial, service.CreateTrialRequest(tuner_id="w1"), metadata=ids("w1"))[0] == (
        grpc.StatusCode.UNAVAILABLE)
    reply, call = stub.CreateTrial.with_call(service.CreateTrialRequest(tuner_id="w1"), metadata=ids("w1"))
    assert (reply.trial.trial_id, dict(call.trailing_metadata())[rpc.ATTEMPT_KEY]) == ("0", "1")

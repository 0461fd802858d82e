"""Issue #14, cases 2, 3 and 6: what the chief answers to reports, trials and spaces from
clients that are not the owner, not identified or not sane, over real gRPC on loopback.

Black-box: real chief processes (`python -m chief`, the tiny fixture model) and a scripted
client (tests/wire.py); the assertions are the status codes of the wire contract and what the
chief then holds (GetTrial, GetSpace, its results files), never log wording. Three chiefs are
started at once for the whole module (one each: default settings; stock clients allowed;
a two-trial search the space test ends).
"""

import contextlib
import csv
import json
import math

import grpc
import pytest
from keras_tuner.src.engine import hyperparameters as hp_module

from tests.procs import cluster_env, free_port, processes, python
from tests.wire import STATUS, Client, ScriptedWorker, proto, ready, service

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model",
                KTC_LEASE_SECONDS=120, KTC_HEARTBEAT_SECONDS=5, KTC_STOP_GRACE_SECONDS=2, KTC_SEED=3, KTC_EPOCHS=1)
CODE = grpc.StatusCode


class Chief:
    def __init__(self, proc, port, tmp):
        self.proc, self.port, self.tmp = proc, port, tmp
        self.client = Client(port)

    def worker(self, name: str, register: bool = True) -> ScriptedWorker:
        worker = ScriptedWorker(self.client, name)
        if register:
            reply = worker.register()
            assert reply.ok, f"Register {name}: {reply.code.name} {reply.details}"
        return worker

    def tail(self) -> str:
        return self.proc.output()[-3000:]


@pytest.fixture(scope="module")
def chiefs(tmp_path_factory):
    settings = {"default": dict(KTC_MAX_TRIALS=20),
                "stock": dict(KTC_MAX_TRIALS=5, KTC_STOCK_LEASE_SECONDS=60),
                "space": dict(KTC_MAX_TRIALS=2)}
    with processes() as start:
        started = {}
        for name, overrides in settings.items():
            tmp, port = tmp_path_factory.mktemp(f"chief-{name}"), free_port()
            env = cluster_env(tmp, port, **{**FIXTURES, **overrides})
            started[name] = Chief(start("chief", python("chief"), env, tmp), port, tmp)
        for name, chief in started.items():
            assert ready(chief.port, 180), f"the {name} chief is not serving:\n{chief.tail()}"
        yield started
        for chief in started.values():
            chief.client.close()


@pytest.fixture
def chief(chiefs):
    return chiefs["default"]


def _running(worker, trial_id):
    reply = worker.get_trial(trial_id)
    assert reply.ok, f"GetTrial {trial_id}: {reply.code.name} {reply.details}"
    return reply.response.trial


def _take(worker):
    reply = worker.create()
    assert reply.ok and reply.response.trial.status == STATUS.RUNNING, (reply.code.name, reply.details)
    return reply.response.trial


def _cleanup(worker, trial_id):
    """End a trial the test left running, so the module's chief is not left holding it."""
    with contextlib.suppress(Exception):
        worker.finish(trial_id, 0.1)


# -- case 2: reports from anyone ------------------------------------------------------------

def test_end_trial_without_identity_is_refused_and_the_owners_result_counts(chief):
    owner = chief.worker("owner-2a")
    trial = _take(owner)
    try:
        failed = proto.Trial()
        failed.CopyFrom(trial)
        failed.status = STATUS.FAILED
        anonymous = chief.client.call("EndTrial", service.EndTrialRequest(trial=failed))
        after = _running(owner, trial.trial_id)
        result = owner.finish(trial.trial_id, 0.75)
        ended = _running(owner, trial.trial_id)
    finally:
        _cleanup(owner, trial.trial_id)
    assert anonymous.code == CODE.FAILED_PRECONDITION, (anonymous.code.name, anonymous.details)
    assert after.status == STATUS.RUNNING, STATUS.Name(after.status)
    assert result.ok, (result.code.name, result.details)
    assert ended.status == STATUS.COMPLETED and ended.score.value == 0.75, ended


@pytest.mark.parametrize("status", ["RUNNING", "UNKNOWN", "IDLE"])
def test_end_trial_with_a_non_final_status_is_invalid_and_the_trial_keeps_running(chief, status):
    owner = chief.worker(f"owner-2b-{status.lower()}")
    trial = _take(owner)
    try:
        reply = owner.end(trial, status=STATUS.Value(status))
        after = _running(owner, trial.trial_id)
        result = owner.finish(trial.trial_id, 0.5)
    finally:
        _cleanup(owner, trial.trial_id)
    assert reply.code == CODE.INVALID_ARGUMENT, (reply.code.name, reply.details)
    assert after.status == STATUS.RUNNING, STATUS.Name(after.status)
    assert result.ok, (result.code.name, result.details)


def test_reports_from_another_worker_or_an_old_attempt_are_refused_and_change_nothing(chief):
    owner, other = chief.worker("owner-2c"), chief.worker("other-2c")
    trial = _take(owner)
    attempt = owner.attempts[trial.trial_id]
    try:
        first = owner.update(trial.trial_id, 0.25, step=0)
        replies = {
            "UpdateTrial from another worker": other.update(trial.trial_id, 0.99, step=1),
            "EndTrial from another worker": other.end(first.response.trial if first.ok else trial),
            "UpdateTrial of another attempt": owner.update(trial.trial_id, 0.98, step=2, attempt=attempt + 1),
            "EndTrial of another attempt": owner.end(trial, attempt=attempt + 1),
        }
        after = _running(owner, trial.trial_id)
        result = owner.end(after)
        ended = _running(owner, trial.trial_id)
    finally:
        _cleanup(owner, trial.trial_id)
    wrong = {what: f"{r.code.name} {r.details}" for what, r in replies.items() if r.code != CODE.FAILED_PRECONDITION}
    assert not wrong, f"expected FAILED_PRECONDITION, got: {wrong}"
    assert after.status == STATUS.RUNNING, STATUS.Name(after.status)
    values = [v for obs in after.metrics.metrics["val_accuracy"].observations for v in obs.value]
    assert values == [0.25], f"a refused report changed the trial's metrics: {values}"
    assert result.ok and ended.status == STATUS.COMPLETED and ended.score.value == 0.25, ended


# -- case 3: anonymous or badly named clients ------------------------------------------------

def test_create_trial_without_identity_is_refused_by_default(chief):
    worker = chief.worker("counter-3a")
    before = _take(worker)
    worker.finish(before.trial_id, 0.5)
    stock = chief.client.call("CreateTrial", service.CreateTrialRequest(tuner_id="stock-3a"))
    after = _take(worker)
    worker.finish(after.trial_id, 0.5)
    handed = [] if stock.code != CODE.OK else [STATUS.Name(stock.response.trial.status)]
    assert stock.code == CODE.FAILED_PRECONDITION, (stock.code.name, stock.details, handed)
    assert int(after.trial_id) == int(before.trial_id) + 1, "the refused stock client was handed a trial"


BAD_TUNER_IDS = ["", "chief", "my-chief-1", "w" * 10240, "worker\x07one", "worker\n1"]


def test_create_trial_with_a_bad_tuner_id_is_invalid_and_hands_out_nothing(chiefs):
    client = chiefs["stock"].client
    replies = {tuner_id[:20]: client.call("CreateTrial", service.CreateTrialRequest(tuner_id=tuner_id))
               for tuner_id in BAD_TUNER_IDS}
    good = client.call("CreateTrial", service.CreateTrialRequest(tuner_id="stock-ok"))
    wrong = {repr(t): f"{r.code.name} {r.details} (trial {r.response.trial.trial_id if r.ok else '-'})"
             for t, r in replies.items() if r.code != CODE.INVALID_ARGUMENT}
    assert not wrong, f"expected INVALID_ARGUMENT, got: {wrong}"
    assert good.ok and good.response.trial.status == STATUS.RUNNING, (good.code.name, good.details)
    assert int(good.response.trial.trial_id) == 0, "a refused tuner id was handed a trial before it"


# -- case 6: unvalidated input ----------------------------------------------------------------

def _space(name: str, kind: str = "int", edit=lambda entry: None) -> object:
    """A space holding one hyperparameter, as KerasTuner encodes it, then edited by `edit`."""
    hp = hp_module.HyperParameters()
    hp.Float(name, 0.0, 1.0) if kind == "float" else hp.Int(name, 0, 3)
    space = hp.to_proto()
    edit((space.space.float_space if kind == "float" else space.space.int_space)[0])
    return space


def _update_space(client, space, metadata=()):
    return client.call("UpdateSpace", service.UpdateSpaceRequest(hyperparameters=space), metadata)


def test_update_space_from_an_unregistered_caller_is_denied(chief):
    reader = chief.worker("reader-6a")
    before = reader.get_space().response.hyperparameters.space
    intruder = _space("intruder")
    ghost = ScriptedWorker(chief.client, "ghost-6a")  # never registered
    unregistered = _update_space(chief.client, intruder, ghost.metadata())
    anonymous = _update_space(chief.client, intruder)
    after = reader.get_space().response.hyperparameters.space
    assert unregistered.code == CODE.PERMISSION_DENIED, (unregistered.code.name, unregistered.details)
    assert anonymous.code in (CODE.PERMISSION_DENIED, CODE.FAILED_PRECONDITION), (anonymous.code.name,
                                                                                   anonymous.details)
    assert after == before, "an unregistered caller changed the search space"


def _set(field, value):
    return lambda entry: setattr(entry, field, value)


def _orphan(entry):
    entry.conditions.add(parent=proto.Condition.Parent(name="no_such_parent", values=[proto.Value(int_value=1)]))


def _ten_thousand():
    space = _space("h0")
    for n in range(1, 10_000):
        entry = space.space.int_space.add()
        entry.CopyFrom(space.space.int_space[0])
        entry.name = f"h{n}"
    return space


BAD_SPACES = {
    "NaN bounds": _space("nan_rate", "float", _set("min_value", math.nan)),
    "infinite bound": _space("inf_rate", "float", _set("max_value", math.inf)),
    "condition on an unknown parent": _space("orphan", edit=_orphan),
    "300-character name": _space("n" * 300),
    "10,000 hyperparameters": _ten_thousand(),
}


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_invalid_spaces_are_refused_and_the_results_stay_valid(chiefs):
    chief = chiefs["space"]
    worker = chief.worker("spacer-6b")
    before = worker.get_space().response.hyperparameters.space
    codes = {what: _update_space(chief.client, space, worker.metadata()) for what, space in BAD_SPACES.items()}
    after = worker.get_space().response.hyperparameters.space
    wrong = {what: f"{r.code.name} {r.details[:200]}" for what, r in codes.items() if r.code != CODE.INVALID_ARGUMENT}
    assert not wrong, f"expected INVALID_ARGUMENT, got: {wrong}"
    assert after == before, f"a refused space changed it: {len(after.int_space) + len(after.float_space)} entries"
    done = worker.run_until_stopped(timeout=60)
    assert chief.proc.wait(timeout=120) == 0, chief.tail()
    results = chief.tmp / "results" / "itest"
    best = _strict_json((results / "best_hyperparameters.json").read_text())
    assert set(best["hyperparameters"]) == {"units"}, best
    rows = list(csv.DictReader(open(results / "trials.csv")))
    assert sorted(r["trial_id"] for r in rows) == sorted(done) and {r["status"] for r in rows} == {"COMPLETED"}
    assert len(rows[0]) < 20, f"trials.csv has {len(rows[0])} columns"


BAD_REGISTRATIONS = {
    "missing worker": {"instance": "i-1", "info": "x"},
    "missing instance": {"worker": "reg-6c", "info": "x"},
    "non-string worker": {"worker": 5, "instance": "i-1"},
    "non-string instance": {"worker": "reg-6c", "instance": ["i"]},
    "empty object": {},
    "not an object": ["reg-6c", "i-1"],
}


def test_register_with_a_bad_payload_is_invalid_argument(chief):
    replies = {what: chief.client.call("Register", payload) for what, payload in BAD_REGISTRATIONS.items()}
    wrong = {what: f"{r.code.name} {r.details}" for what, r in replies.items()
             if r.code != CODE.INVALID_ARGUMENT or "unknown trial" in r.details}
    assert not wrong, f"expected INVALID_ARGUMENT, got: {wrong}"

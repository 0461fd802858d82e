"""Issue 21 (E): malformed or out-of-range values are refused with INVALID_ARGUMENT and one line,
identity before payload, never a traceback, and a flood of one refusal costs one log line.

Black-box, as tests/unit/test_edges_rpc.py: one real chief process (the tiny fixture model) and a
scripted client (tests/wire.py) on loopback."""

import grpc
import pytest

from tests.procs import cluster_env, free_port, processes, python
from tests.unit.test_edges_rpc import FIXTURES, Chief, _running, _update_space
from tests.wire import STATUS, proto, ready, service

CODE = grpc.StatusCode
SAMPLING = proto.Sampling


@pytest.fixture(scope="module")
def chief(tmp_path_factory):
    with processes() as start:
        tmp, port = tmp_path_factory.mktemp("chief-refusals"), free_port()
        started = Chief(start("chief", python("chief"), cluster_env(tmp, port, **{**FIXTURES, "KTC_MAX_TRIALS": 20}),
                              tmp), port, tmp)
        assert ready(started.port, 180), f"the chief is not serving:\n{started.tail()}"
        yield started
        started.client.close()


def _take(worker):
    reply = worker.create()
    assert reply.ok and reply.response.trial.status == STATUS.RUNNING, (reply.code.name, reply.details)
    return reply.response.trial


def _report(worker, trial_id, **metrics):
    request = service.UpdateTrialRequest(trial_id=trial_id, metrics=metrics, step=0)
    return worker.client.call("UpdateTrial", request, worker.metadata(trial_id))


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_non_finite_metric_is_invalid_and_records_nothing(chief, value):
    worker = chief.worker(f"inf-{str(value).strip('-')}-{'neg' if str(value).startswith('-') else 'pos'}")
    trial = _take(worker)
    reply = _report(worker, trial.trial_id, val_accuracy=value, val_loss=0.1)
    other = _report(worker, trial.trial_id, val_accuracy=0.5, val_loss=value)
    after = _running(worker, trial.trial_id)
    ended = worker.finish(trial.trial_id, 0.25)
    assert (reply.code, other.code) == (CODE.INVALID_ARGUMENT, CODE.INVALID_ARGUMENT), (reply.details, other.details)
    assert "not a finite number" in reply.details
    assert after.status == STATUS.RUNNING and not after.metrics.metrics, after
    assert ended.ok, (ended.code.name, ended.details)
    assert worker.get_trial(trial.trial_id).response.trial.score.value == 0.25


def test_a_completed_end_without_the_objective_is_invalid_and_the_trial_keeps_running(chief):
    worker = chief.worker("no-objective")
    trial = _take(worker)
    bare = worker.end(trial)
    only_loss = _report(worker, trial.trial_id, val_loss=0.3)  # refused too: the objective is missing
    after = _running(worker, trial.trial_id)
    ended = worker.finish(trial.trial_id, 0.5)
    assert bare.code == CODE.INVALID_ARGUMENT, (bare.code.name, bare.details)
    assert "val_accuracy" in bare.details
    assert only_loss.code == CODE.INVALID_ARGUMENT, (only_loss.code.name, only_loss.details)
    assert after.status == STATUS.RUNNING, STATUS.Name(after.status)
    assert ended.ok, (ended.code.name, ended.details)
    assert "Traceback" not in chief.proc.output()


def _malformed(kind: str):
    space = proto.HyperParameters()
    if kind == "min > max":
        entry = space.space.int_space.add(name="bad_int", min_value=5, max_value=1, sampling=SAMPLING.LINEAR)
    elif kind == "min > max (float)":
        entry = space.space.float_space.add(name="bad_float", min_value=5, max_value=1, sampling=SAMPLING.LINEAR)
    elif kind == "a Choice with no values":
        entry = space.space.choice_space.add(name="bad_choice")
    elif kind == "sampling 0":
        entry = space.space.float_space.add(name="bad_sampling", min_value=0, max_value=1, sampling=0)
    elif kind == "a negative step":
        entry = space.space.int_space.add(name="bad_step", min_value=0, max_value=9, step=-3,
                                          sampling=SAMPLING.LINEAR)
    assert entry is not None
    return space


MALFORMED = ["min > max", "min > max (float)", "a Choice with no values", "sampling 0", "a negative step"]


def test_malformed_hyperparameters_are_invalid_from_a_worker_and_denied_before_parsing_to_others(chief):
    worker = chief.worker("spacer-e")
    ghost = chief.worker("ghost-e", register=False)
    before = worker.get_space().response.hyperparameters.space
    replies = {kind: _update_space(chief.client, _malformed(kind), worker.metadata()) for kind in MALFORMED}
    anonymous = {kind: _update_space(chief.client, _malformed(kind)) for kind in MALFORMED}
    unregistered = {kind: _update_space(chief.client, _malformed(kind), ghost.metadata()) for kind in MALFORMED}
    after = worker.get_space().response.hyperparameters.space
    wrong = {k: f"{r.code.name} {r.details[:200]}" for k, r in replies.items() if r.code != CODE.INVALID_ARGUMENT}
    assert not wrong, f"expected INVALID_ARGUMENT, got: {wrong}"
    denied = {**{f"anonymous {k}": r for k, r in anonymous.items()},
              **{f"unregistered {k}": r for k, r in unregistered.items()}}
    wrong = {k: f"{r.code.name} {r.details[:200]}" for k, r in denied.items() if r.code != CODE.PERMISSION_DENIED}
    assert not wrong, f"expected PERMISSION_DENIED (identity before the payload), got: {wrong}"
    assert after == before
    assert "Traceback" not in chief.proc.output()


def test_a_flood_of_one_refusal_costs_one_log_line_per_caller_and_reason(chief):
    worker = chief.worker("flooder-e")
    lines_before = len(chief.proc.output().splitlines())
    space = _malformed("min > max")
    codes = {_update_space(chief.client, space, worker.metadata()).code for _ in range(150)}
    codes |= {_update_space(chief.client, space).code for _ in range(150)}
    new = chief.proc.output().splitlines()[lines_before:]
    assert codes == {CODE.INVALID_ARGUMENT, CODE.PERMISSION_DENIED}, codes
    assert not [line for line in new if "Traceback" in line]
    assert len(new) <= 4, "\n".join(new[:20])
    assert any("flooder-e" in line for line in new), new

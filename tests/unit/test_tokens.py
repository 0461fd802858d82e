"""Issue 21 (B, D): an attempt is one training by one process, and a worker shares the chief's
settings. A worker's instance is its secret per-process token; the journal records its digest;
after a chief restart only that process gets its running attempt back, another process with the
same id never inherits it, and attempt numbers never repeat. Fake clock, real oracle."""

import json

import pytest

from chief.claims import SettingsMismatch
from chief.coordinator import Coordinator
from chief.leases import DuplicateWorker, Leases, token_digest
from shared.fingerprint import Fingerprint, differences
from tests.unit.test_coordinator import Clock, finish, journal, kill_9, make_oracle, me


def chief(tmp_path, clock, retries=3, **kw):
    """A chief as it serves: its state files written at start-up."""
    c = Coordinator(make_oracle(tmp_path, retries=retries), lease_seconds=10, heartbeat_seconds=1, clock=clock, **kw)
    c.save_state()
    return c


def started_then_restarted(tmp_path, clock):
    """w1 (token 'original') runs trial 0; the chief is killed and restarted, and serves."""
    c = chief(tmp_path, clock)
    c.register("w1", "original")
    trial, attempt = c.create_trial("w1", me("w1", "original"))
    assert attempt == 1
    kill_9(c)
    restarted = chief(tmp_path, clock)
    restarted.serving()
    return restarted, trial


def test_the_journal_names_who_started_an_attempt_by_a_digest_of_its_token_only(tmp_path):
    clock = Clock()
    c = chief(tmp_path, clock)
    c.register("w1", "secret-token-1")
    trial, _ = c.create_trial("w1", me("w1", "secret-token-1"))
    c.close()
    text = open(tmp_path / "proj" / "ktcluster-runs.jsonl").read()
    start = next(e for e in journal(tmp_path) if e["event"] == "start")
    assert start["token"] == token_digest("secret-token-1") and "secret-token-1" not in text


def test_after_a_restart_a_newcomer_with_the_id_is_refused_and_the_original_resumes_its_attempt(tmp_path):
    clock = Clock()
    restarted, trial = started_then_restarted(tmp_path, clock)
    with pytest.raises(DuplicateWorker, match="before the chief restarted"):
        restarted.register("w1", "newcomer")  # it started while the chief restarted
    assert restarted.heartbeat("w1", "newcomer")["ok"] is False
    with pytest.raises(DuplicateWorker):
        restarted.create_trial("w1", me("w1", "newcomer"))
    beat = restarted.heartbeat("w1", "original")  # the original, still training, is heard
    assert beat["ok"] is True and beat["attempts"] == {trial.trial_id: 1}
    resumed, attempt = restarted.create_trial("w1", me("w1", "original"))
    assert (resumed.trial_id, attempt) == (trial.trial_id, 1)
    clock.now += 2
    with pytest.raises(DuplicateWorker):  # the original is present: still refused
        restarted.register("w1", "newcomer")
    finish(restarted, resumed, me("w1", "original", 1))
    starts = [e for e in journal(tmp_path) if e["event"] == "start"]
    assert [(e["trial"], e["attempt"]) for e in starts] == [(trial.trial_id, 1)]  # one training, one start
    restarted.close()


def test_after_a_restart_a_newcomer_gets_the_id_of_a_gone_original_but_a_new_attempt(tmp_path):
    clock = Clock()
    restarted, trial = started_then_restarted(tmp_path, clock)
    with pytest.raises(DuplicateWorker):
        restarted.register("w1", "newcomer")
    clock.now += 3  # the original never called: gone once presence (3 heartbeats) ran out
    restarted.register("w1", "newcomer")
    assert restarted.heartbeat("w1", "newcomer")["attempts"] == {}  # not inherited
    again, attempt = restarted.create_trial("w1", me("w1", "newcomer"))
    assert (again.trial_id, attempt) == (trial.trial_id, 2)
    assert restarted.heartbeat("w1", "original")["ok"] is False  # the original, if it was alive, learns
    finish(restarted, again, me("w1", "newcomer", 2))
    events = journal(tmp_path)
    starts = [(e["attempt"], e["token"]) for e in events if e["event"] == "start"]
    assert starts == [(1, token_digest("original")), (2, token_digest("newcomer"))]
    lost = [e for e in events if e["event"] == "end" and e["attempt"] == 1]
    assert lost[0]["status"] == "RETRY" and "new process" in lost[0]["message"]
    restarted.close()


def test_attempt_numbers_never_repeat_across_restarts(tmp_path):
    clock = Clock()
    c = chief(tmp_path, clock)
    seen = []
    for round_ in range(3):
        token = f"process-{round_}"
        c.register("w1", token)
        trial, attempt = c.create_trial("w1", me("w1", token))
        seen.append((trial.trial_id, attempt))
        kill_9(c)
        clock.now += 5  # each process dies with the chief; a new one comes back after the claim ran out
        c = chief(tmp_path, clock)
        c.serving()
        clock.now += 5
    assert [a for _, a in seen] == [1, 2, 3] and len({t for t, _ in seen}) == 1, seen
    c.close()


def test_a_restart_granted_id_is_not_taken_by_a_stock_client(tmp_path):
    leases = Leases(10, presence_seconds=3, clock=Clock(), stock_lease_seconds=5)
    leases.grant("w1", claim=token_digest("original"))
    with pytest.raises(DuplicateWorker):
        leases.renew_stock("w1")
    assert leases.beat("w1", "original")


FINGERPRINT = Fingerprint(model="tests.fixtures.models:build_model", dataset="digits", tuner="random",
                          objective="val_accuracy", epochs="2", space="abc")


def test_a_worker_whose_settings_differ_is_refused_at_register_with_one_line_naming_each(tmp_path):
    clock = Clock()
    c = chief(tmp_path, clock, fingerprint=FINGERPRINT)
    theirs = {**FINGERPRINT.to_wire(), "model": "other:build", "epochs": "3"}
    with pytest.raises(SettingsMismatch) as refused:
        c.register("w1", "p1", fingerprint=theirs)
    line = str(refused.value)
    assert "\n" not in line and "KTC_MODEL is 'other:build' on the worker" in line and "KTC_EPOCHS" in line
    assert "KTC_DATASET" not in line and refused.value.code == "FAILED_PRECONDITION"
    assert c.heartbeat("w1", "p1")["ok"] is False  # not registered
    c.register("w1", "p1", fingerprint=FINGERPRINT.to_wire())  # the same settings: accepted
    assert differences(FINGERPRINT, ["not", "an", "object"]) == [
        "fingerprint must be an object with the keys model, dataset, tuner, objective, epochs, space"]
    c.close()


def test_the_fingerprint_of_a_model_is_its_settings_and_the_space_it_declares():
    from shared import fingerprint
    from shared.config import Objective

    class Settings:
        model, dataset, tuner, epochs, objective = "m:f", "digits", "random", 2, Objective("val_loss", "min")

    def one(hp):
        hp.Int("units", 8, 64)

    def two(hp):
        hp.Int("units", 8, 128)

    a, b = fingerprint.of(Settings, one), fingerprint.of(Settings, two)
    assert a.objective == "val_loss:min" and a.space != b.space and a == fingerprint.of(Settings, one)
    assert json.loads(json.dumps(a.to_wire())) == a.to_wire()

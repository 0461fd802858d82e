"""The trial state machine (chief.trials), alone: pure logic, no oracle, no I/O."""

import itertools

import grpc
import pytest

from chief import trials
from chief.records import RETRY, VERSION, from_record
from chief.trials import (BadTransition, Caller, Cause, Ended, LostAttempt, Move, NotFinal, NotOwner, OracleStep, Phase,
                          Queued, Refused, Started, TrialBook, TrialRun, UnknownTrial)

QUEUED, RUNNING, COMPLETED, FAILED = Phase.QUEUED, Phase.RUNNING, Phase.COMPLETED, Phase.FAILED
CHIEF, OWNER = Cause.CHIEF, Cause.OWNER

#: Every (from, event, to, cause) the issue's diagram allows; anything else must be refused.
ALLOWED = {
    (None, Move.START, RUNNING, CHIEF),
    (QUEUED, Move.START, RUNNING, CHIEF),
    (RUNNING, Move.REPORT, RUNNING, OWNER),
    (RUNNING, Move.END, COMPLETED, OWNER),
    (RUNNING, Move.END, FAILED, OWNER),
    (RUNNING, Move.END, QUEUED, OWNER),
    (RUNNING, Move.END, FAILED, CHIEF),  # a lease ran out, or the worker id was taken over
    (RUNNING, Move.END, QUEUED, CHIEF),
    (None, Move.QUEUE, QUEUED, CHIEF),  # opening a project: a trial known only from its state
}


def start(book, trial_id, owner, stock, now, token=None):
    """A live start: the machine decides it, then applies it; the run after it."""
    return book.apply(book.decide_start(trial_id, owner, stock=stock, now=now, token=token)).run


def end(book, trial_id, outcome, now, cause=OWNER, message="", used=None):
    """An end with a given outcome (as replayed from an end line); the run after it."""
    run = book.runs.get(trial_id)
    return book.apply(Ended(trial_id, run.attempt if run else 1, outcome, cause, now, message=message,
                            used=used)).run


def test_every_transition_is_allowed_or_refused_as_the_diagram_says():
    book = TrialBook()
    for phase, event, target, cause in itertools.product([None, *Phase], Move, Phase, Cause):
        run = TrialRun("7", phase=phase)
        if (phase, event, target, cause) in ALLOWED:
            book._move(run, event, target, cause)
            assert run.phase is target
        else:
            with pytest.raises(BadTransition, match="trial 7: "):
                book._move(run, event, target, cause)
            assert run.phase is phase, (phase, event, target, cause)  # nothing changed


def test_final_phases_are_the_ended_ones():
    assert {p for p in Phase if p.final} == {COMPLETED, FAILED}


def test_attempts_start_and_end_through_the_machine():
    book = TrialBook()
    run = start(book, "0", "w1", stock=False, now=100.0)
    assert (run.phase, run.owner, run.attempt, run.ended) == (RUNNING, "w1", 1, 0)
    assert book.owned_by("w1") == {"0": 1} and book.owned_by("w2") == {}
    end(book, "0", QUEUED, now=110.0, cause=CHIEF, message="LeaseExpired: w1 silent")  # a lease ran out
    assert (run.phase, run.ended, run.seconds, run.message) == (QUEUED, 1, 10.0, "LeaseExpired: w1 silent")
    assert book.owned_by("w1") == {} and not book.running
    start(book, "0", "w2", stock=False, now=120.0)
    assert (run.owner, run.attempt, run.seconds) == ("w2", 2, None) and book.owned_by("w2") == {"0": 2}
    end(book, "0", COMPLETED, now=125.0, used=["x"])
    assert (run.phase, run.accepted, run.used, run.ended_at) == (COMPLETED, 2, ["x"], 125.0)
    assert run.message == "LeaseExpired: w1 silent"  # the last failed attempt's message stays

    with pytest.raises(BadTransition):  # a final trial never starts again ...
        start(book, "0", "w3", stock=False, now=130.0)
    with pytest.raises(BadTransition):  # ... nor ends again
        end(book, "0", FAILED, now=130.0)
    start(book, "1", "w1", stock=False, now=0)
    with pytest.raises(BadTransition):  # a lease cannot complete a trial
        end(book, "1", COMPLETED, now=1, cause=CHIEF)
    assert (run.phase, run.owner, run.attempt, run.ended) == (COMPLETED, "w2", 2, 2)
    assert book.running == {"1": book.runs["1"]} and book.runs["1"].phase is RUNNING
    with pytest.raises(UnknownTrial):
        end(book, "9", FAILED, now=0)


def _book_with(*, stock=False):
    """Trial 0 on its second attempt, held by w1 (or by the stock client s1)."""
    book = TrialBook()
    owner = "s1" if stock else "w1"
    start(book, "0", owner, stock=stock, now=0)
    end(book, "0", QUEUED, now=1, cause=CHIEF)
    start(book, "0", owner, stock=stock, now=2)
    return book


def test_only_the_current_owner_of_the_current_attempt_may_report():
    book = _book_with()
    for caller in (Caller("w1", "i1"), Caller("w1", "i1", attempt=2)):
        assert book.check_owner("0", caller, "result") is book.runs["0"]
    refusals = {
        Caller("w1", "i1", attempt=1): "attempt 1 from w1 refused: attempt 2 belongs to w1",  # a stale attempt
        Caller("w2", "i2"): "from w2 refused: attempt 2 belongs to w1",
        Caller("w2", "i2", attempt=2): "attempt 2 from w2 refused",
        Caller(): "without a worker id refused: it belongs to w1",  # anonymous: not a stock-held trial
    }
    for caller, why in refusals.items():
        with pytest.raises(NotOwner, match=why):
            book.check_owner("0", caller, "result")
    with pytest.raises(UnknownTrial):
        book.check_owner("5", Caller("w1", "i1"), "result")


def test_an_anonymous_caller_may_report_only_for_a_stock_held_trial():
    book = _book_with(stock=True)
    assert book.check_owner("0", Caller(), "progress report").owner == "s1"
    with pytest.raises(NotOwner):
        book.check_owner("0", Caller("w1", "i1"), "progress report")


def test_nobody_reports_for_a_trial_that_is_not_running():
    book = _book_with()
    end(book, "0", COMPLETED, now=3)
    for caller in (Caller("w1", "i1"), Caller("w1", "i1", attempt=2), Caller()):
        with pytest.raises(NotOwner, match="the trial is COMPLETED, not running"):
            book.check_owner("0", caller, "result")
    queued = _book_with()
    end(queued, "0", QUEUED, now=3, cause=CHIEF)
    with pytest.raises(NotOwner, match="QUEUED"):
        queued.check_owner("0", Caller("w1", "i1", attempt=2), "result")


def test_a_repeated_end_is_recognised_only_for_the_attempt_that_ended_the_trial():
    book = _book_with()
    w1 = Caller("w1", "i1", attempt=2)
    assert not book.is_repeat_end("0", w1)  # still running: a first end, not a repeat
    end(book, "0", COMPLETED, now=3)
    assert book.is_repeat_end("0", w1)
    assert book.is_repeat_end("0", Caller("w1", "another-process", attempt=2))
    for caller in (Caller("w1", "i1"), Caller("w1", "i1", attempt=1), Caller("w2", "i2", attempt=2), Caller()):
        assert not book.is_repeat_end("0", caller), caller
    assert not book.is_repeat_end("9", w1)  # never handed out

    retried = _book_with()
    end(retried, "0", QUEUED, now=3)  # w1's attempt 2 asked for a retry: sent again, it is a repeat
    assert retried.is_repeat_end("0", w1)
    start(retried, "0", "w2", stock=False, now=4)  # once attempt 3 runs, it is not
    assert not retried.is_repeat_end("0", w1)


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "INVALID"])
def test_final_statuses_end_an_attempt(status):
    TrialBook.check_final(status)


@pytest.mark.parametrize("status", ["RUNNING", "IDLE", "STOPPED", "UNKNOWN", None, ""])
def test_non_final_statuses_are_refused(status):
    with pytest.raises(NotFinal, match="must end COMPLETED, FAILED or INVALID"):
        TrialBook.check_final(status)


def test_every_refusal_names_a_grpc_status_code():
    codes = {cls: cls.code for cls in vars(trials).values() if isinstance(cls, type) and issubclass(cls, Refused)}
    assert set(codes) >= {Refused, UnknownTrial, NotOwner, NotFinal, BadTransition, trials.InvalidRequest,
                          trials.NotRegistered}
    for cls, code in codes.items():
        assert isinstance(getattr(grpc.StatusCode, code), grpc.StatusCode), cls
    assert (NotOwner.code, NotFinal.code, trials.InvalidRequest.code, trials.NotRegistered.code) == (
        "FAILED_PRECONDITION", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "PERMISSION_DENIED")


@pytest.mark.parametrize("status, ended_before, retries, outcome", [
    ("COMPLETED", 0, 1, COMPLETED), ("FAILED", 0, 1, FAILED),
    ("INVALID", 0, 1, QUEUED), ("INVALID", 1, 1, FAILED), ("INVALID", 0, 0, FAILED), ("INVALID", 2, 3, QUEUED)])
def test_the_machine_decides_how_an_attempt_ends(status, ended_before, retries, outcome):
    """An INVALID attempt is retried while the trial has retries left (the machine decides it,
    not the oracle's queue); FAILED and COMPLETED are final."""
    book = TrialBook()
    for n in range(ended_before):
        start(book, "0", "w1", stock=False, now=n)
        end(book, "0", QUEUED, now=n + 0.5)
    start(book, "0", "w1", stock=False, now=10.0)
    decided = book.decide_end("0", status, OWNER, now=12.5, retries=retries, message="m", used=["x"])
    assert (decided.attempt, decided.outcome, decided.seconds) == (ended_before + 1, outcome, 2.5)
    assert decided.used == (["x"] if outcome is COMPLETED else None)
    assert book.runs["0"].phase is RUNNING  # deciding changes nothing


def test_apply_returns_what_the_caller_must_carry_out():
    book = TrialBook()
    first = book.apply(book.decide_start("0", "w1", stock=False, now=0.0, token="t1"))
    assert (first.oracle, first.lost, first.event.to_record()["event"]) == (OracleStep.NOTHING, None, "start")
    lost = book.apply(book.decide_end("0", "INVALID", CHIEF, now=1.0, retries=1, message="LeaseExpired: w1"))
    assert (lost.oracle, lost.lost, lost.trouble) == (OracleStep.END, LostAttempt("0", 1, "LeaseExpired: w1"), True)
    assert book.queued == {"0": book.runs["0"]} and not book.running
    retry = book.apply(book.decide_start("0", "w2", stock=False, now=2.0))
    assert retry.oracle is OracleStep.RESTARTED and retry.event.attempt == 2 and not book.queued
    done = book.apply(book.decide_end("0", "COMPLETED", OWNER, now=3.0, retries=1))
    assert (done.oracle, done.lost, done.trouble, done.run.accepted) == (OracleStep.END, None, False, 2)


def test_a_replayed_record_moves_the_book_as_the_live_event_did():
    """Live: decide, apply, journal to_record(); restart: from_record() of that line, applied."""
    live, replayed = TrialBook(), TrialBook()
    events = [live.decide_start("0", "w1", stock=False, now=1.0, token="t1")]
    live.apply(events[-1])
    events.append(live.decide_end("0", "INVALID", CHIEF, now=2.0, retries=1, message="lost"))
    live.apply(events[-1])
    events.append(live.decide_start("0", "w2", stock=True, now=3.0))
    live.apply(events[-1])
    events.append(live.decide_end("0", "COMPLETED", OWNER, now=5.0, retries=1, used=["x"]))
    live.apply(events[-1])
    for event in events:
        line = event.to_record()
        assert line["v"] == VERSION and from_record(line) == event
        replayed.apply(from_record(line))
    assert vars(replayed.runs["0"]) == vars(live.runs["0"])
    assert events[1].to_record()["status"] == RETRY


def test_records_written_by_d1fbc2d_are_version_0_and_read_with_defaults():
    start_line = {"event": "start", "trial": "3", "worker": "w1", "attempt": 1, "stock": False, "t": 1.0}
    assert from_record(start_line) == Started("3", "w1", 1, 1.0, stock=False, token=None)
    end_line = {"event": "end", "trial": "3", "attempt": 1, "status": "RETRY", "t": 2.0}
    assert from_record(end_line) == Ended("3", 1, QUEUED, OWNER, 2.0)
    oldest = [{"event": "start", "trial": "3", "worker": "w1", "t": 1.0},  # before attempt numbers
              {"event": "end", "trial": "3", "status": "RETRY", "t": 2.0},
              {"event": "start", "trial": "3", "worker": "w2", "t": 3.0}]
    book = TrialBook()
    for line in oldest:
        book.apply(from_record(line))
    assert (book.runs["3"].attempt, book.runs["3"].ended, book.runs["3"].owner) == (2, 1, "w2")
    with pytest.raises(KeyError):  # a version 1 line always has its attempt
        from_record({"event": "start", "trial": "3", "worker": "w1", "t": 1.0, "v": 1})
    with pytest.raises(ValueError, match="record version 2: this chief reads versions 0 to 1"):
        from_record({**start_line, "v": 2})


def test_a_record_that_contradicts_the_book_is_refused_and_changes_nothing():
    book = TrialBook()
    start(book, "0", "w1", stock=False, now=0)
    with pytest.raises(BadTransition, match="attempt 3 started after attempt 1"):
        book.apply(Started("0", "w2", 3, 1.0))
    with pytest.raises(BadTransition, match="attempt 2 ended, but attempt 1 runs"):
        book.apply(Ended("0", 2, COMPLETED, OWNER, 1.0))
    assert (book.runs["0"].phase, book.runs["0"].owner, book.runs["0"].ended) == (RUNNING, "w1", 0)
    book.apply(Queued("7"))
    assert book.queued == {"7": book.runs["7"]} and book.runs["7"].attempt == 0

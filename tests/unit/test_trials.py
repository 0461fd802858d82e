"""The trial state machine (chief.trials), alone: pure logic, no oracle, no I/O."""

import itertools

import grpc
import pytest

from chief import trials
from chief.trials import (BadTransition, Caller, Cause, NotFinal, NotOwner, Phase, Refused, TrialBook, TrialRun,
                          UnknownTrial)

QUEUED, RUNNING, COMPLETED, FAILED = Phase.QUEUED, Phase.RUNNING, Phase.COMPLETED, Phase.FAILED
CHIEF, OWNER = Cause.CHIEF, Cause.OWNER

#: Every (from, event, to, cause) the issue's diagram allows; anything else must be refused.
ALLOWED = {
    (None, "start", RUNNING, CHIEF),
    (QUEUED, "start", RUNNING, CHIEF),
    (RUNNING, "report", RUNNING, OWNER),
    (RUNNING, "end", COMPLETED, OWNER),
    (RUNNING, "end", FAILED, OWNER),
    (RUNNING, "end", QUEUED, OWNER),
    (RUNNING, "expire", FAILED, CHIEF),
    (RUNNING, "expire", QUEUED, CHIEF),
}


def test_every_transition_is_allowed_or_refused_as_the_diagram_says():
    book = TrialBook()
    for phase, event, target, cause in itertools.product([None, *Phase], ["start", "report", "end", "expire"],
                                                         Phase, Cause):
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
    run = book.start("0", "w1", stock=False, now=100.0)
    assert (run.phase, run.owner, run.attempt, run.ended) == (RUNNING, "w1", 1, 0)
    assert book.owned_by("w1") == {"0": 1} and book.owned_by("w2") == {}
    book.end("0", QUEUED, now=110.0, cause=CHIEF, message="LeaseExpired: w1 silent")  # a lease ran out
    assert (run.phase, run.ended, run.seconds, run.message) == (QUEUED, 1, 10.0, "LeaseExpired: w1 silent")
    assert book.owned_by("w1") == {} and not book.running
    book.start("0", "w2", stock=False, now=120.0)
    assert (run.owner, run.attempt, run.seconds) == ("w2", 2, None) and book.owned_by("w2") == {"0": 2}
    book.end("0", COMPLETED, now=125.0, used=["x"])
    assert (run.phase, run.accepted, run.used, run.ended_at) == (COMPLETED, 2, ["x"], 125.0)
    assert run.message == "LeaseExpired: w1 silent"  # the last failed attempt's message stays

    with pytest.raises(BadTransition):  # a final trial never starts again ...
        book.start("0", "w3", stock=False, now=130.0)
    with pytest.raises(BadTransition):  # ... nor ends again
        book.end("0", FAILED, now=130.0)
    book.start("1", "w1", stock=False, now=0)
    with pytest.raises(BadTransition):  # a lease cannot complete a trial
        book.end("1", COMPLETED, now=1, cause=CHIEF)
    assert (run.phase, run.owner, run.attempt, run.ended) == (COMPLETED, "w2", 2, 2)
    assert book.running == {"1": book.runs["1"]} and book.runs["1"].phase is RUNNING
    with pytest.raises(UnknownTrial):
        book.end("9", FAILED, now=0)


def _book_with(*, stock=False):
    """Trial 0 on its second attempt, held by w1 (or by the stock client s1)."""
    book = TrialBook()
    owner = "s1" if stock else "w1"
    book.start("0", owner, stock=stock, now=0)
    book.end("0", QUEUED, now=1, cause=CHIEF)
    book.start("0", owner, stock=stock, now=2)
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
    book.end("0", COMPLETED, now=3)
    for caller in (Caller("w1", "i1"), Caller("w1", "i1", attempt=2), Caller()):
        with pytest.raises(NotOwner, match="the trial is COMPLETED, not running"):
            book.check_owner("0", caller, "result")
    queued = _book_with()
    queued.end("0", QUEUED, now=3, cause=CHIEF)
    with pytest.raises(NotOwner, match="QUEUED"):
        queued.check_owner("0", Caller("w1", "i1", attempt=2), "result")


def test_a_repeated_end_is_recognised_only_for_the_attempt_that_ended_the_trial():
    book = _book_with()
    w1 = Caller("w1", "i1", attempt=2)
    assert not book.is_repeat_end("0", w1)  # still running: a first end, not a repeat
    book.end("0", COMPLETED, now=3)
    assert book.is_repeat_end("0", w1)
    assert book.is_repeat_end("0", Caller("w1", "another-process", attempt=2))
    for caller in (Caller("w1", "i1"), Caller("w1", "i1", attempt=1), Caller("w2", "i2", attempt=2), Caller()):
        assert not book.is_repeat_end("0", caller), caller
    assert not book.is_repeat_end("9", w1)  # never handed out

    retried = _book_with()
    retried.end("0", QUEUED, now=3)  # w1's attempt 2 asked for a retry: sent again, it is a repeat
    assert retried.is_repeat_end("0", w1)
    retried.start("0", "w2", stock=False, now=4)  # once attempt 3 runs, it is not
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

"""The worker's attempt ledger (worker.attempts): what a trial used travels on its attempt, and
goes with it."""

from worker.attempts import AttemptLedger


def test_what_an_attempt_used_is_kept_on_it_until_it_is_forgotten():
    ledger = AttemptLedger(clock=lambda: 1.0)
    ledger.record_used("3", {"units"})  # no attempt of ours: nothing to record it on
    assert ledger.used("3") == []
    ledger.start("3", 2)
    ledger.record_used("3", {"units", "batch_size"})
    assert ledger.used("3") == ["batch_size", "units"] and ledger.number("3") == 2
    ledger.forget("3")
    assert ledger.used("3") == [] and ledger.number("3") is None


def test_a_new_attempt_of_the_same_trial_starts_with_nothing_used():
    ledger = AttemptLedger(clock=lambda: 1.0)
    ledger.start("3", 1)
    ledger.record_used("3", {"units"})
    ledger.lose("3")
    ledger.start("3", 2)  # the chief handed this process the retry
    assert ledger.used("3") == [] and not ledger.is_lost("3")

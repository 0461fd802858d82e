"""Every coordinator call in the unit tests is followed by `Coordinator.validate()` (issue 23):
the book, the journal replayed and the oracle agree after each call, refused ones included, or
the test fails naming the difference."""

import functools
import sys

import pytest

CALLS = ("register", "heartbeat", "expire_leases", "get_space", "update_space", "create_trial", "update_trial",
         "end_trial", "get_trial", "get_best_trials")


def _validated(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            self.validate()

    return call


@pytest.fixture(autouse=True)
def validate_every_coordinator_call(monkeypatch):
    module = sys.modules.get("chief.coordinator")  # only where a test uses the coordinator
    if module is not None:
        for name in CALLS:
            monkeypatch.setattr(module.Coordinator, name, _validated(getattr(module.Coordinator, name)))
    yield

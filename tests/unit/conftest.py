"""Every coordinator call in the unit tests is followed by `Coordinator.validate()` (issue 23):
the book, the journal replayed and the oracle agree after each call, refused ones included, or
the test fails naming the difference (tests.validation)."""

import sys

import pytest

from tests import validation


@pytest.fixture(autouse=True)
def validate_every_coordinator_call(monkeypatch):
    module = sys.modules.get("chief.coordinator")  # only where a test uses the coordinator
    if module is not None:
        validation.patch(module.Coordinator, setattr=monkeypatch.setattr)
    yield

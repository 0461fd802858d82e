"""The invariant check wired into the tests (tests.validation) runs after every coordinator call,
refused ones included, and reports a broken invariant: in process by raising, in a chief process
by ending it with INVARIANT_EXIT (tests.validated_chief)."""

import subprocess
import sys

import pytest

from tests import validation


class _Broken:
    """A stand-in coordinator whose invariant breaks once `end_trial` ran."""

    def __init__(self):
        self.ended, self.checked = False, 0

    def end_trial(self, trial_id):
        self.ended = True
        raise ValueError("refused")  # a refused call is checked too

    def get_space(self):
        return "space"

    def validate(self):
        self.checked += 1
        if self.ended:
            raise RuntimeError("the book says COMPLETED, the oracle RUNNING")


def _patched():
    cls = type("Broken", (_Broken,), {})
    for name in validation.CALLS:
        if not hasattr(cls, name):
            setattr(cls, name, lambda self, *a, **k: None)
    return cls


def test_every_call_is_followed_by_the_check_and_a_broken_invariant_raises():
    cls = _patched()
    validation.patch(cls)
    coordinator = cls()
    assert coordinator.get_space() == "space" and coordinator.checked == 1
    with pytest.raises(RuntimeError, match="the oracle RUNNING"):
        coordinator.end_trial("1")


def test_a_chief_process_ends_with_the_invariant_exit_and_one_line():
    code = (
        "from tests import validation\n"
        "from tests.unit.test_validation import _patched\n"
        "cls = _patched(); validation.patch(cls, on_broken=validation.exit_broken)\n"
        "cls().end_trial('1')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == validation.INVARIANT_EXIT, proc.stderr
    assert f"{validation.INVARIANT_LINE}: the book says COMPLETED, the oracle RUNNING" in proc.stderr

"""A worker treats the finished marker as final only when a chief wrote it after the worker
started (shared.layout.FinishedWatch): a chief that continues the project withdraws it, one that
only reports it confirms it (chief.finished), and the worker waits for either before it loads
anything (worker.__main__._await_chief)."""

import logging
import threading
import time
import types

import pytest

from shared import layout
from worker.__main__ import _await_chief

SUMMARY = '{"completed": 2}\n'


@pytest.fixture
def marked(tmp_path):
    (tmp_path / layout.FINISHED_MARKER).write_text(SUMMARY)
    return tmp_path


def test_a_marker_found_at_the_start_is_not_final_until_written_again(marked):
    watch = layout.FinishedWatch(str(marked))
    assert watch.marked_at_start and not watch.final() and not watch.withdrawn()
    layout.confirm_finished(str(marked))
    assert watch.final() and (marked / layout.FINISHED_MARKER).read_text() == SUMMARY
    assert not layout.FinishedWatch(str(marked)).final()  # a worker started after the confirmation


def test_a_withdrawn_marker_and_one_written_after_the_start(tmp_path, marked):
    watch = layout.FinishedWatch(str(marked))
    (marked / layout.FINISHED_MARKER).unlink()
    assert watch.withdrawn() and not watch.final()
    (marked / layout.FINISHED_MARKER).write_text(SUMMARY)  # the continued search ended
    assert watch.final() and not watch.withdrawn()
    fresh = layout.FinishedWatch(str(tmp_path / "new"))
    assert not fresh.marked_at_start and not fresh.withdrawn()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / layout.FINISHED_MARKER).write_text(SUMMARY)
    assert fresh.final()


def _wait(folder, timeout=30.0, lease=60.0):
    settings = types.SimpleNamespace(project="p", chief_timeout_seconds=timeout, lease_seconds=lease)
    return _await_chief(settings, "worker-1", layout.FinishedWatch(str(folder)), layout.ChiefFailureWatch(str(folder)))


def _later(action, seconds=0.3):
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


@pytest.mark.parametrize("word, code", [
    (lambda folder: layout.confirm_finished(str(folder)), 0),  # the chief only reports the project
    (lambda folder: (folder / layout.FINISHED_MARKER).unlink(), None),  # the chief continues it
    (lambda folder: layout.write_chief_failure(str(folder), "KTC_MODEL: hyperparameter 'units' ...", 2), 2),
])
def test_the_worker_follows_the_chiefs_word_at_once(marked, word, code, capsys):
    _later(lambda: word(marked))
    started = time.monotonic()
    assert _wait(marked) == code
    assert time.monotonic() - started < 5  # not KTC_CHIEF_TIMEOUT_SECONDS (30)
    if code == 2:
        assert "the chief could not start (it exited 2): KTC_MODEL" in capsys.readouterr().err


def test_a_report_that_failed_after_confirming_is_still_the_end(marked):
    def report_failed():
        layout.confirm_finished(str(marked))  # chief.finished.report_finished confirms whatever happens
        layout.write_chief_failure(str(marked), "writing the results failed", 1)

    _later(report_failed)
    assert _wait(marked) == 0


def test_no_word_from_any_chief_ends_the_wait_after_the_timeout(marked, caplog):
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="ktcluster.worker"):
        assert _wait(marked, timeout=0.6) == 0
    assert 0.5 < time.monotonic() - started < 5
    assert "no chief continued it within 1s; nothing to do" in caplog.text


def test_a_worker_restarted_after_the_end_waits_a_lease_and_a_little_not_the_chief_timeout(marked, monkeypatch):
    """A worker that Swarm restarts after the search ended finds no chief: it waits for one as long
    as a continuing chief can take to withdraw the marker (a lease, then FINISHED_WAIT_SECONDS), not
    KTC_CHIEF_TIMEOUT_SECONDS (300 s by default)."""
    import worker.__main__ as worker_main

    monkeypatch.setattr(worker_main, "FINISHED_WAIT_SECONDS", 0.5)
    started = time.monotonic()
    assert _wait(marked, timeout=300.0, lease=0.3) == 0
    assert 0.7 < time.monotonic() - started < 5

"""shared.layout's record of a chief that could not start, and a worker's watch of it: what is
acted on at once, what only after STALE_FAILURE_SECONDS, and what is ignored (no sleeping: a
fake clock)."""

import json
import os

import pytest

from shared import layout
from shared.layout import ChiefFailure, ChiefFailureWatch


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_record_written_while_the_worker_watches_counts_at_once(tmp_path):
    clock = Clock()
    watch = ChiefFailureWatch(str(tmp_path / "proj"), stale_seconds=10, clock=clock)
    assert watch.check() is None
    layout.write_chief_failure(str(tmp_path / "proj"), "KTC_DATASET=mnist: download failed", 1)
    failure = watch.check()
    assert (failure.reason, failure.code) == ("KTC_DATASET=mnist: download failed", 1)


def test_a_record_there_before_the_watch_counts_only_once_it_has_stood_the_grace(tmp_path):
    project = str(tmp_path)
    layout.write_chief_failure(project, "an earlier start failed", 2)
    clock = Clock()
    watch = ChiefFailureWatch(project, stale_seconds=10, clock=clock)
    clock.now += 9
    assert watch.check() is None  # a new chief may be about to remove it
    clock.now += 1
    assert watch.check().code == 2  # no chief removed it: its last word stands


def test_a_stale_record_removed_then_written_again_counts_at_once(tmp_path):
    project = str(tmp_path)
    layout.write_chief_failure(project, "an earlier start failed", 1)
    watch = ChiefFailureWatch(project, stale_seconds=10, clock=Clock())
    layout.clear_chief_failure(project)  # a new chief starts...
    assert watch.check() is None
    layout.write_chief_failure(project, "this start failed", 2)  # ...and fails too
    assert watch.check() == ChiefFailure("this start failed", 2, watch.check().at)


def test_clearing_is_quiet_when_there_is_nothing_to_clear(tmp_path):
    layout.clear_chief_failure(str(tmp_path / "missing"))
    layout.clear_chief_failure(str(tmp_path))


@pytest.mark.parametrize("text", ["", "{", "[1]", "null", json.dumps({"reason": "x"}),
                                  json.dumps({"reason": "x", "code": 0}), json.dumps({"reason": "x", "code": 256}),
                                  json.dumps({"reason": "x", "code": True}), json.dumps({"reason": "x", "code": "1"}),
                                  json.dumps({"reason": 5, "code": 1}), json.dumps({"reason": " \n\t", "code": 1})])
def test_a_record_that_is_not_valid_is_ignored(tmp_path, text):
    (tmp_path / layout.CHIEF_FAILED).write_text(text)
    assert layout.read_chief_failure(str(tmp_path)) is None
    assert ChiefFailureWatch(str(tmp_path), stale_seconds=0).check() is None


def test_a_reason_is_repeated_as_one_printable_line_of_bounded_length(tmp_path):
    record = {"reason": "line one\nline two\x1b[31m red" + "x" * 5000, "code": 1, "at": "yesterday"}
    (tmp_path / layout.CHIEF_FAILED).write_text(json.dumps(record))
    failure = layout.read_chief_failure(str(tmp_path))
    assert failure.reason.startswith("line one line two [31m red")
    assert len(failure.reason) == layout.MAX_REASON and failure.at == 0.0


def test_the_record_is_written_atomically_into_the_project_folder(tmp_path):
    project = tmp_path / "state" / "proj"
    layout.write_chief_failure(str(project), "why", 1)
    assert os.listdir(project) == [layout.CHIEF_FAILED]  # no temporary file left behind
    assert json.loads((project / layout.CHIEF_FAILED).read_text())["reason"] == "why"


def test_a_process_has_one_watch_per_project(tmp_path):
    first = layout.chief_failure_watch(str(tmp_path / "p"))
    assert layout.chief_failure_watch(str(tmp_path / "p" / ".." / "p")) is first
    assert layout.chief_failure_watch(str(tmp_path / "q")) is not first

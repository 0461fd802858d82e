"""A failing state disk (chief.statefiles): how often it is said, when it is too long, and the
state files' writer backing off instead of retrying in a loop."""

import errno
import logging
import threading
import time

import keras_tuner as kt

from chief import statefiles
from chief.oracle import cluster_oracle
from chief.statefiles import StateWriter, StorageFaults

FULL = OSError(errno.ENOSPC, "No space left on device")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _lines(caplog, text="the state disk fails"):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_failures_are_logged_at_most_every_few_seconds_with_a_count(caplog):
    clock = Clock()
    faults = StorageFaults(grace=60, every=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        for tick in range(41):  # a failure every 0.25 s for 10 s
            clock.now = tick * 0.25
            faults.failed("journal", FULL)
    lines = _lines(caplog)
    assert len(lines) == 3  # at 0, 5 and 10 s
    assert "journal: No space left on device" in lines[0] and "1 failures in 0s" in lines[0]
    assert "21 failures in 5s" in lines[1] and "41 failures in 10s" in lines[2]
    assert "KTC_STORAGE_GRACE_SECONDS" in lines[0] and all(r.levelno == logging.ERROR for r in caplog.records)


def test_the_search_stops_only_after_the_grace_period_without_a_success():
    clock = Clock()
    faults = StorageFaults(grace=30, clock=clock)
    assert faults.over() is None and not faults.failing
    faults.failed("journal", FULL)
    clock.now = 30
    assert faults.failing and faults.over() is None
    clock.now = 30.5
    reason = faults.over()
    assert "the state disk has failed for 30s (journal: No space left on device)" in reason
    assert "resumes from its journal" in reason and "\n" not in reason
    faults.succeeded("journal")
    assert faults.over() is None and not faults.failing
    clock.now = 100
    assert faults.over() is None


def test_each_source_recovers_on_its_own(caplog):
    """The state files writing again does not make a failing journal well, and the other way round."""
    clock = Clock()
    faults = StorageFaults(grace=30, every=5, clock=clock)
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        faults.failed("journal", FULL)
        clock.now = 10
        faults.failed("state files", FULL)
        clock.now = 20
        faults.succeeded("journal")  # works again; the files still fail, since 10 s
        assert faults.failing
        clock.now = 35
        assert faults.over() is None  # 25 s of failing files, not 35
        clock.now = 40.5
        assert "state files" in faults.over()
        faults.succeeded("state files")
        assert not faults.failing and faults.over() is None
        clock.now = 41  # a new failure after a full recovery is said at once, counted afresh
        faults.failed("journal", FULL)
    works = _lines(caplog, "works again")
    assert works == ["journal: the state disk works again after 20s", "state files: the state disk works again after 30s"]
    fails = _lines(caplog)
    assert len(fails) == 3 and "1 failures in 0s" in fails[-1]  # 0 s, 10 s (5 s later: logged), 41 s


def test_the_state_writer_backs_off_and_logs_once_per_window(tmp_path, monkeypatch, caplog):
    """A full disk: the writer retries with a growing wait (not every `quiet` seconds) and the log
    says so once per window; once the disk works, the files are written and that is said."""
    oracle = cluster_oracle(kt.oracles.RandomSearchOracle, objective=kt.Objective("score", "max"), max_trials=3)
    oracle.use_project(str(tmp_path), "proj")
    attempts, disk_full = [], threading.Event()
    disk_full.set()
    real_write = statefiles.write_text_atomic

    def write(path, text, fsync=False):
        attempts.append(time.monotonic())
        if disk_full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, text, fsync=fsync)

    monkeypatch.setattr(statefiles, "write_text_atomic", write)
    lock = threading.Lock()
    faults = StorageFaults(grace=600, every=5)
    writer = StateWriter(oracle, lock, faults, quiet=0.01, max_lag=0.05)
    try:
        with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
            with lock:
                writer.save()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (len(attempts) < 6 or not faults.failing):
                time.sleep(0.05)
            time.sleep(0.3)
            tried = len(attempts)
            # waits of 0.02, 0.04, ... 0.64 s: a handful of tries in ~1.5 s, not one every 10 ms
            assert 6 <= tried <= 12, tried
            gaps = [b - a for a, b in zip(attempts, attempts[1:])]
            assert max(gaps) >= 0.16  # the wait grew (0.02 doubled 3 times); a try may write several files
            assert len(_lines(caplog)) == 1 and faults.failing
            disk_full.clear()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and faults.failing:
                time.sleep(0.05)
            assert not faults.failing and (tmp_path / "proj" / "oracle.json").exists()
            assert len(_lines(caplog, "works again")) == 1 and len(_lines(caplog)) == 1
    finally:
        disk_full.clear()
        writer.close()

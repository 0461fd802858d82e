"""Issue #14, "What was seen": the edges of exact-once, with real chief and worker processes.

Cases 1 (torn journal), 3 (a silent stock client), 4 (a paused worker), 5 (a full state disk)
and 6 (settings). Every wait is bounded; assertions are outcomes (exit codes, trials.csv, the
journal, files on disk, status codes), not log wording, except where the issue quotes a message.
Scripted clients (tests/wire.py) stand in for workers where only the wire matters.
"""

import contextlib
import csv
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import grpc
import pytest

from tests.conftest import ROOT
from tests.procs import cluster_env, free_port, processes, python, wait_until
from tests.wire import STATUS, Client, ScriptedWorker, ready, service

FIXTURES = dict(KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model",
                KTC_LEASE_SECONDS=4, KTC_HEARTBEAT_SECONDS=1, KTC_STOP_GRACE_SECONDS=5,
                KTC_CHIEF_TIMEOUT_SECONDS=60, KTC_SEED=5, KTC_EPOCHS=1)
JOURNAL = "ktcluster-runs.jsonl"
NO_SPACE = re.compile(r"no space left|enospc|errno 28", re.IGNORECASE)


def _env(tmp_path, **overrides):
    return cluster_env(tmp_path, free_port(), **{**FIXTURES, **overrides})


def _port(env) -> int:
    return int(env["KERASTUNER_ORACLE_PORT"])


def _worker_env(env, worker_id):
    return {**env, "KERASTUNER_TUNER_ID": worker_id}


def _journal_path(tmp_path):
    return tmp_path / "state" / "itest" / JOURNAL


def _events(tmp_path) -> list[dict]:
    """The journal's decodable lines (a test that cares about the others checks them itself)."""
    events = []
    if _journal_path(tmp_path).exists():
        for line in open(_journal_path(tmp_path), "rb"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def _undecodable(tmp_path) -> list[int]:
    """1-based numbers of the journal's lines that are not one JSON object each."""
    bad = []
    for number, line in enumerate(open(_journal_path(tmp_path), "rb"), 1):
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(number)
        except ValueError:
            bad.append(number)
    return bad


def _rows(tmp_path) -> list[dict]:
    return list(csv.DictReader(open(tmp_path / "results" / "itest" / "trials.csv")))


def _once_problems(tmp_path, max_trials) -> list[str]:
    """Exact-once: each trial 0..n-1 one row in trials.csv, COMPLETED, and one COMPLETED end in
    the journal (never two)."""
    problems = []
    try:
        rows = _rows(tmp_path)
    except OSError as exc:
        return [f"no trials.csv: {exc}"]
    ids = sorted(int(r["trial_id"]) for r in rows)
    if ids != list(range(max_trials)):
        problems.append(f"trials.csv holds trials {ids}, not each of 0..{max_trials - 1} once")
    if {r["status"] for r in rows} != {"COMPLETED"}:
        problems.append(f"trials.csv statuses: {[(r['trial_id'], r['status']) for r in rows]}")
    completed = [e["trial"] for e in _events(tmp_path) if e.get("event") == "end" and e.get("status") == "COMPLETED"]
    twice = sorted({t for t in completed if completed.count(t) > 1})
    if twice:
        problems.append(f"trials completed twice in the journal: {twice}")
    return problems


def _in_flight(tmp_path, worker=None):
    """(trial, worker) of the latest start without an end yet, if any."""
    open_starts = {}
    for event in _events(tmp_path):
        if event.get("event") == "start":
            open_starts[event["trial"]] = event.get("worker")
        elif event.get("event") == "end":
            open_starts.pop(event["trial"], None)
    for trial, owner in reversed(list(open_starts.items())):
        if worker is None or owner == worker:
            return trial, owner
    return None


def _completed(tmp_path) -> int:
    return sum(1 for e in _events(tmp_path) if e.get("event") == "end" and e.get("status") == "COMPLETED")


def _status(env, tmp_path, name="status"):
    """`python -m chief status`: (exit code, output)."""
    done = subprocess.run(python("chief", "status"), env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    (tmp_path / f"{name}.log").write_text(done.stdout + done.stderr)
    return done.returncode, done.stdout + done.stderr


def _exit_code(proc, timeout) -> int | None:
    """The exit code, or None if it still runs after `timeout` seconds (then it is killed)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)
        return None


# -- case 1: a torn journal -----------------------------------------------------------------

TORN_TRIALS = 4


@pytest.fixture(scope="module")
def killed_search(tmp_path_factory):
    """A search of 4 trials whose chief and worker were killed -9 mid-trial, after a result."""
    tmp_path = tmp_path_factory.mktemp("killed")
    env = _env(tmp_path, KTC_MAX_TRIALS=TORN_TRIALS, KTC_EPOCHS=2, KTC_TEST_SLEEP=0.3)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        wait_until(lambda: _completed(tmp_path) >= 1 and _in_flight(tmp_path), 120, 0.2,
                   what="a result, then a trial in flight")
        time.sleep(0.5)
        for proc in (chief, worker):
            os.kill(proc.pid, signal.SIGKILL)
            proc.popen.wait(timeout=10)
    return tmp_path


def _copy_project(source, target):
    for folder in ("state", "results", "logs"):
        if (source / folder).exists():
            shutil.copytree(source / folder, target / folder)


def _space_line(journal: bytes) -> bytes:
    return next(line for line in journal.splitlines() if b'"space"' in line.split(b",")[0])


TEARS = {  # what a crash mid-append leaves after the last whole line
    "a few bytes": lambda journal: journal.splitlines()[-1][:3],
    "mid-line": lambda journal: journal.splitlines()[-1][: len(journal.splitlines()[-1]) // 2],
    "a whole line without its newline": _space_line,
}


def _torn_restarts(source, tmp_path, tear) -> list[str]:
    """Tear the journal, restart the chief and finish the search with a worker; restart it again;
    run status. The problems seen (empty: all well)."""
    _copy_project(source, tmp_path)
    path = _journal_path(tmp_path)
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(TEARS[tear](whole))
    problems = []
    env = _env(tmp_path, KTC_MAX_TRIALS=TORN_TRIALS, KTC_LEASE_SECONDS=30)
    with processes() as start:
        chief = start("chief-1", python("chief"), env, tmp_path)
        if not ready(_port(env), 180):
            return [f"restart 1 not serving: {chief.output()[-1500:]}"]
        client = Client(_port(env))
        try:
            worker = ScriptedWorker(client, "worker-1")  # the killed worker's id, back in a new process:
            # refused while the id is kept for the killed process (3 heartbeats), then its own
            wait_until(lambda: worker.register().ok, 20, 0.5, what="the id of the killed worker")
            worker.run_until_stopped(60)
        except AssertionError as exc:
            problems.append(f"restart 1: {exc}")
        finally:
            client.close()
        code = _exit_code(chief, 60)
        if code != 0:
            return problems + [f"restart 1 exit {code}: {chief.output()[-1500:]}"]
        if not path.read_bytes().startswith(whole):
            problems.append("restart 1 changed what the journal held before the tear")
        if _undecodable(tmp_path):
            problems.append(f"after restart 1 the journal has undecodable lines {_undecodable(tmp_path)} "
                            "(the torn line was not cut off before appending)")
        again = start("chief-2", python("chief"), _env(tmp_path, KTC_MAX_TRIALS=TORN_TRIALS), tmp_path)
        code = _exit_code(again, 90)
        if code != 0:
            problems.append(f"restart 2 exit {code}: {again.output()[-1500:]}")
    code, output = _status(env, tmp_path)
    if code != 0:
        problems.append(f"status exit {code}: {output[-1500:]}")
    return problems + _once_problems(tmp_path, TORN_TRIALS)


def test_a_torn_last_journal_line_is_cut_off_and_two_restarts_in_a_row_finish_exactly_once(
        killed_search, tmp_path):
    found = {}

    def run(tear, folder):
        try:
            found[tear] = _torn_restarts(killed_search, folder, tear)
        except Exception as exc:  # reported with the others
            found[tear] = [f"{type(exc).__name__}: {exc}"]

    threads = []
    for n, tear in enumerate(TEARS):
        (tmp_path / f"tear{n}").mkdir()
        threads.append(threading.Thread(target=run, args=(tear, tmp_path / f"tear{n}")))
        threads[-1].start()
    for thread in threads:
        thread.join(timeout=400)
    problems = {tear: found.get(tear, ["did not finish"]) for tear in TEARS}
    assert not any(problems.values()), json.dumps(problems, indent=1)


def _names_the_line(output: str, path, number: int) -> bool:
    """One line of `output` names the journal file and, apart from its path, the line `number`."""
    for line in output.splitlines():
        if JOURNAL in line:
            rest = line.replace(str(path), "").replace(JOURNAL, "")
            if re.search(rf"(?<![\w.-]){number}(?![\w.-])", rest):
                return True
    return False


def test_an_undecodable_line_inside_the_journal_stops_chief_and_status_naming_file_and_line(
        killed_search, tmp_path):
    _copy_project(killed_search, tmp_path)
    path = _journal_path(tmp_path)
    lines = path.read_bytes().splitlines(keepends=True)
    number = 3  # 1-based, well inside the journal
    assert len(lines) > number + 2, lines
    lines[number - 1] = lines[number - 1][:20] + b"\n"  # a torn line with lines after it
    path.write_bytes(b"".join(lines))
    env = _env(tmp_path, KTC_MAX_TRIALS=TORN_TRIALS)
    problems = []
    code, output = _status(env, tmp_path)
    if code == 0 or not _names_the_line(output, path, number):
        problems.append(f"status: exit {code}, output: {output[-800:]}")
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        code = _exit_code(chief, 60)
        output = chief.output()
    if code in (0, None) or not _names_the_line(output, path, number) or "Traceback" in output:
        problems.append(f"chief: exit {code} ({'still serving after 60s' if code is None else 'exited'}), "
                        f"output: {output[-800:]}")
    assert not problems, "\n".join(problems)


# -- case 3: a stock client that goes silent ------------------------------------------------

def test_a_silent_stock_client_loses_its_trial_to_a_worker_and_the_search_ends(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=2, KTC_STOCK_LEASE_SECONDS=3, KTC_LEASE_SECONDS=6)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        assert ready(_port(env), 180), chief.output()[-2000:]
        client = Client(_port(env))
        stock = client.call("CreateTrial", service.CreateTrialRequest(tuner_id="stock-1"))  # no metadata
        client.close()
        assert stock.ok and stock.response.trial.status == STATUS.RUNNING, (stock.code.name, stock.details)
        stuck = stock.response.trial.trial_id
        worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        code = _exit_code(chief, 60)
        assert code == 0, f"chief exit {code} (None: the search hung on trial {stuck}):\n{chief.output()[-2000:]}"
        assert _exit_code(worker, 30) == 0, worker.output()[-2000:]
    rows = {r["trial_id"]: r for r in _rows(tmp_path)}
    assert sorted(rows) == ["0", "1"] and {r["status"] for r in rows.values()} == {"COMPLETED"}, rows
    assert rows[stuck]["worker"] == "worker-1" and rows[stuck]["attempts"] == "2", rows[stuck]
    named = [line for line in chief.output().splitlines() if "stock-1" in line and re.search(rf"\b{stuck}\b", line)
             and re.search(r"silent|lease|stuck|expired|no call", line, re.IGNORECASE)]
    assert named, "no log line names the trial stuck on the silent stock client"


# -- case 4: a worker paused past its lease -------------------------------------------------

def _files(folder) -> dict:
    """path -> (mtime_ns, sha256) of every file under `folder`."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = (os.stat(path).st_mtime_ns,
                                                    hashlib.sha256(open(path, "rb").read()).hexdigest())
    return found


def test_a_paused_worker_back_after_its_lease_writes_nothing_and_exits_soon(tmp_path):
    env = _env(tmp_path, KTC_MAX_TRIALS=2, KTC_EPOCHS=3, KTC_TEST_SLEEP=0.3, KTC_CHIEF_TIMEOUT_SECONDS=120)
    with processes() as start:
        chief = start("chief", python("chief"), env, tmp_path)
        paused = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
        other = start("w2", python("worker"), _worker_env(env, "worker-2"), tmp_path)
        trial, _ = wait_until(lambda: _in_flight(tmp_path, "worker-1"), 120, 0.2, what="worker-1 to start a trial")
        time.sleep(1.0)  # mid-fit
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            assert _exit_code(chief, 240) == 0, chief.output()[-2000:]
            assert _exit_code(other, 30) == 0, other.output()[-2000:]
            trial_dir = tmp_path / "state" / "itest" / f"trial_{trial}"
            results = tmp_path / "results" / "itest"
            accepted = {**{f"trial_{trial}/{p}": v for p, v in _files(trial_dir).items()},
                        "trials.csv": _files(results)["trials.csv"]}
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        code = _exit_code(paused, 15)
        waited = time.monotonic() - resumed_at
        time.sleep(1.0)  # anything it still wrote is on disk now
    now = {**{f"trial_{trial}/{p}": v for p, v in _files(trial_dir).items()},
           "trials.csv": _files(results)["trials.csv"]}
    abandoned = re.compile(rf"^trial_{trial}/attempt_?0*1/")  # the paused worker's own attempt folder
    rewritten = sorted(p for p in set(now) | set(accepted)
                       if not abandoned.match(p) and now.get(p) != accepted.get(p))
    rows = {r["trial_id"]: r for r in _rows(tmp_path)}
    problems = _once_problems(tmp_path, 2)
    if rows.get(trial, {}).get("worker") != "worker-2" or rows[trial].get("attempts") != "2":
        problems.append(f"trial {trial} row: {rows.get(trial)}")
    if rewritten:
        problems.append(f"files of the accepted result changed after the chief accepted it: {rewritten}")
    if code is None:
        problems.append("the resumed worker was still running 15 s after SIGCONT (the search was over)")
    assert not problems, "\n".join(problems) + f"\nworker-1 ({waited:.0f}s):\n{paused.output()[-1500:]}"


# -- case 5: a full state disk --------------------------------------------------------------

@contextlib.contextmanager
def _tmpfs(path, size):
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the state dir (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(folder) -> str:
    """Write a file until the disk is full; its path."""
    filler = os.path.join(folder, "filler")
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 512)
    return filler


def _busy_scripted(worker, seconds, stop=lambda: False) -> tuple[list[str], str | None]:
    """Take and finish trials for `seconds` as a worker would, retrying refusals: (the codes of
    every refused call, the trial still held)."""
    refused, holding, deadline = [], None, time.monotonic() + seconds
    while time.monotonic() < deadline and not stop():
        if holding is None:
            reply = worker.create()
            if reply.ok and reply.response.trial.status == STATUS.RUNNING:
                holding = reply.response.trial.trial_id
        else:
            reply = worker.finish(holding, 0.5)
            if reply.ok:
                holding = None
        if not reply.ok:
            refused.append(reply.code.name)
            time.sleep(0.3)
        else:
            time.sleep(0.05)
    return refused, holding


TRACEBACK_LINE = re.compile(r"^\s|^[\w.]+(Error|Exception)\b")


def _disk_lines(output, since=0) -> list[str]:
    """Log lines about the full disk (a logged traceback counts once, by its message line)."""
    return [line for line in output[since:].splitlines() if NO_SPACE.search(line) and not TRACEBACK_LINE.match(line)]


def test_a_full_state_disk_refuses_with_unavailable_logs_rarely_and_recovers_exactly_once(tmp_path):
    with _tmpfs(tmp_path / "state", "32m") as state:
        env = _env(tmp_path, KTC_MAX_TRIALS=6, KTC_EPOCHS=2, KTC_TEST_SLEEP=0.3, KTC_LEASE_SECONDS=20,
                   KTC_STORAGE_GRACE_SECONDS=120, KTC_MAX_RETRIES=2, KTC_CHIEF_TIMEOUT_SECONDS=120)
        with processes() as start:
            chief = start("chief", python("chief"), env, tmp_path)
            worker = start("w1", python("worker"), _worker_env(env, "worker-1"), tmp_path)
            assert ready(_port(env), 180), chief.output()[-2000:]
            client = Client(_port(env))
            scripted = ScriptedWorker(client, "scripted-1")
            assert scripted.register().ok
            wait_until(lambda: _completed(tmp_path) >= 1 and _in_flight(tmp_path, "worker-1"), 120, 0.2,
                       what="a result, then worker-1 training")
            logged_before = len(chief.output())
            filler = _fill(state)
            window = 8.0
            refused, holding = _busy_scripted(scripted, window)
            disk_lines = _disk_lines(chief.output(), logged_before)
            os.unlink(filler)
            problems = []
            if not refused or set(refused) != {"UNAVAILABLE"}:
                problems.append(f"while the disk was full the chief answered {refused or 'OK to every call'} "
                                "(expected UNAVAILABLE: it must not acknowledge what it cannot store)")
            if not 1 <= len(disk_lines) <= 1 + window / 3:
                problems.append(f"{len(disk_lines)} log lines about the full disk in {window:.0f}s: "
                                f"{disk_lines[:5]}")
            # The held trial is settled by the first answer that is not UNAVAILABLE: OK (stored now)
            # or a refusal because the chief stored the end itself once the disk was back (retrying
            # the report then would only burn the deadline). Exact-once is judged from the journal
            # and trials.csv below, not from this answer.
            deadline = time.monotonic() + 30
            while holding is not None and time.monotonic() < deadline:
                if scripted.finish(holding, 0.5).code != grpc.StatusCode.UNAVAILABLE:
                    holding = None
                else:
                    time.sleep(0.3)
            with contextlib.suppress(AssertionError):  # asking at once: told STOPPED, not left to the grace
                scripted.run_until_stopped(90)
            client.close()
            chief_code, worker_code = _exit_code(chief, 90), _exit_code(worker, 60)
        if chief_code != 0:
            problems.append(f"chief exit {chief_code} after the disk was freed: {chief.output()[-1500:]}")
        if worker_code != 0:
            problems.append(f"worker exit {worker_code} ({'SIGSEGV' if worker_code == -11 else 'see its log'})")
        if not NO_SPACE.search(worker.output()):
            problems.append("the worker never said its write failed for want of space")
        failed_ends = [e for e in _events(tmp_path) if e.get("event") == "end" and e.get("status") != "COMPLETED"
                       and NO_SPACE.search(e.get("message") or "")]
        if not failed_ends:
            problems.append("no attempt was ended with the disk error (the worker went silent instead)")
        if chief_code == 0:
            problems += _once_problems(tmp_path, 6)
        assert not problems, "\n".join(problems) + f"\nworker:\n{worker.output()[-1500:]}"


def test_a_state_disk_full_past_the_grace_stops_the_chief_with_one_line(tmp_path):
    with _tmpfs(tmp_path / "state", "8m") as state:
        env = _env(tmp_path, KTC_MAX_TRIALS=50, KTC_LEASE_SECONDS=30, KTC_STORAGE_GRACE_SECONDS=3)
        with processes() as start:
            chief = start("chief", python("chief"), env, tmp_path)
            assert ready(_port(env), 180), chief.output()[-2000:]
            client = Client(_port(env))
            scripted = ScriptedWorker(client, "scripted-1")
            assert scripted.register().ok
            trial = scripted.create().response.trial
            assert scripted.finish(trial.trial_id, 0.5).ok
            filler = _fill(state)
            started = time.monotonic()
            _busy_scripted(scripted, 25, stop=lambda: chief.popen.poll() is not None)
            code = _exit_code(chief, 10)
            took = time.monotonic() - started
            client.close()
            os.unlink(filler)
    output = chief.output()
    lines = [line for line in output.splitlines() if line.startswith("ktcluster chief:")]
    assert code not in (0, None), f"chief exit {code} (None: still running {took:.0f}s after the disk filled)"
    assert len(lines) == 1 and "Traceback" not in output, output[-2000:]
    logged = [line for line in _disk_lines(output) if not line.startswith("ktcluster chief:")]
    assert len(logged) <= 2 + took / 3, logged[:5]  # the first notice, one every few seconds, the last word


# -- case 6: settings that can only be mistakes ----------------------------------------------

@pytest.mark.parametrize("role", ["chief", "worker"])
@pytest.mark.parametrize("setting,value,expected", [
    ("KTC_EPOCHS", "99999999999999999999", "KTC_EPOCHS"),
    ("KTC_MAX_TRAILS", "3", "did you mean KTC_MAX_TRIALS?"),
])
def test_an_absurd_or_misspelt_setting_exits_2_naming_it(tmp_path, role, setting, value, expected):
    env = _env(tmp_path, KTC_CHIEF_TIMEOUT_SECONDS=3, **{setting: value})
    if role == "worker":
        env = _worker_env(env, "worker-1")
    with processes() as start:
        proc = start(role, python(role), env, tmp_path)
        code = _exit_code(proc, 20)
    lines = [line for line in proc.output().splitlines() if line.startswith(f"ktcluster {role}:")]
    assert code == 2, f"exit {code} (None: accepted, still running after 20s): {proc.output()[-1500:]}"
    assert len(lines) == 1 and expected in lines[0], proc.output()[-1500:]

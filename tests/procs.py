"""Real processes for tests: OS-assigned ports, bounded waits, stopped by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_env(tmp_path, port, **overrides) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTC_", "KERASTUNER_"))}
    env.update(
        KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port), KTC_DATASET="digits",
        KTC_STATE_DIR=str(tmp_path / "state"), KTC_LOG_DIR=str(tmp_path / "logs"),
        KTC_DATA_DIR=str(tmp_path / "data"), KTC_RESULTS_DIR=str(tmp_path / "results"),
        KTC_PROJECT="itest", KTC_TF_THREADS="1", KTC_STOP_GRACE_SECONDS="20", KTC_CHIEF_TIMEOUT_SECONDS="60",
        PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
        KTC_METRICS_PORT="0",  # off: chiefs of tests running side by side would share the default port
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Proc:
    """A child process whose output goes to a file; `stop()` ends it by PID."""

    def __init__(self, args, env, log_path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
        self._log.close()


@contextlib.contextmanager
def processes():
    """Yield a `start(name, args, env)` function; every process started is stopped on exit."""
    started: list[Proc] = []

    def start(name, args, env, log_dir):
        proc = Proc(args, env, os.path.join(log_dir, f"{name}.log"))
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def python(module, *args):
    """The command that runs `python -m module args`. A chief that serves runs as
    `tests.validated_chief`: its invariant is checked after every call (tests.validation)."""
    if module == "chief" and not args:
        module = "tests.validated_chief"
    return [sys.executable, "-m", module, *args]


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_json(url: str, body: dict | None = None, timeout: float = 10):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def scrape(port: int, timeout: float = 10) -> str:
    """The exposition of a chief's metrics endpoint (chief.metrics) on 127.0.0.1:`port`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return response.read().decode()


def prometheus_samples(text: str) -> dict:
    """{(sample name, frozenset of label items): value} of an exposition, read with
    prometheus_client's own parser (as Prometheus reads it)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def hparams_session_groups(base_url: str) -> list[dict]:
    body = {"experimentName": "", "allowedStatuses": ALL_STATUSES, "colParams": [],
            "aggregationType": "AGGREGATION_AVG", "startIndex": 0, "sliceSize": 1000, "includeMetrics": True}
    return http_json(f"{base_url}/data/plugin/hparams/session_groups", body).get("sessionGroups", [])

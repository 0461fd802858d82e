"""The chief's metrics endpoint as a process starts it (the numbers during a search are checked
in test_cluster.py, on its search)."""

import contextlib
import socket
import subprocess
import sys

from shared import layout
from tests.conftest import ROOT
from tests.procs import cluster_env, free_port


def test_a_chief_whose_metrics_port_is_taken_exits_2_with_one_line(tmp_path):
    """Before the dataset, the model or the project are touched, and without a failure record for
    the workers: what holds the port may be the chief they need."""
    with contextlib.closing(socket.socket()) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = cluster_env(tmp_path, free_port(), KTC_METRICS_PORT=port)
        proc = subprocess.run([sys.executable, "-m", "chief"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 2, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("ktcluster chief:")]
    assert said == [f"ktcluster chief: KTC_METRICS_PORT={port}: cannot serve metrics on "
                                        f"127.0.0.1:{port} (Address already in use); choose a free port, or 0 "
                                        "for no metrics"]
    assert not (tmp_path / "state" / "itest" / layout.CHIEF_FAILED).exists()
    assert not (tmp_path / "data" / "digits").exists() and "oracle serving" not in proc.stdout

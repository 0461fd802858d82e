"""The stack on the two nodes of tests/e2e/swarm2.py as a user deploys it, and what the two-node
tests read of it: the journal on the share (who holds which attempt, how each ended), the nodes
each task runs on, the files one attempt wrote; and a probe without the cluster's certificate."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import time

from chief.journal import JOURNAL, read_lines
from shared.layout import search_finished
from tests.conftest import ROOT
from tests.procs import wait_until


class Search:
    """One stack on the two nodes; its journal, read from the share, is what the tests look at."""

    def __init__(self, cluster, name, tmp, files, **settings):
        self.cluster, self.name, self.tmp = cluster, name, tmp
        self.project = settings["KTC_PROJECT"]
        self.share = tmp / "share"
        for sub in ("state", "logs", "data", "results"):
            (self.share / sub).mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KTC_", "KERASTUNER_"))}
        env.update(DOCKER_HOST=cluster.manager.socket, KTC_IMAGE_TAG=cluster.image_tag, KTC_TENSORBOARD_PORT="6006",
                   KTC_RESULTS_HOST_DIR=str(self.share / "results"), KTC_SHARE_TYPE="none",
                   KTC_SHARE_OPTIONS="bind", KTC_SHARE_DEVICE=str(self.share),
                   **{k: str(v) for k, v in settings.items()})
        args = [a for f in ["stack.yaml", "stack.shared.yaml", *files] for a in ("-c", os.path.join(ROOT, f))]
        proc = subprocess.run(["docker", "stack", "deploy", "--detach=true", "--resolve-image", "never", *args, name],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        self.deployed = time.monotonic()

    def service(self, role):
        return f"{self.name}_{role}"

    def events(self) -> list[dict]:
        return read_lines(os.path.join(self.share, "state", self.project, JOURNAL))[0]

    def finished(self) -> bool:
        return search_finished(os.path.join(self.share, "state", self.project))

    def holding(self, worker: str) -> tuple[str, int] | None:
        """(trial, attempt) that `worker` runs now by the journal: started, not ended."""
        events = self.events()
        ended = {(e["trial"], e["attempt"]) for e in events if e["event"] == "end"}
        mine = [(e["trial"], e["attempt"]) for e in events if e["event"] == "start" and e["worker"] == worker]
        return mine[-1] if mine and mine[-1] not in ended else None

    def workers_by_node(self) -> dict[int, str]:
        """Node index -> tuner id of the worker task running there (one each, by the scheduler's spread)."""
        found = {}
        for node in self.cluster.nodes:
            for c in node.running(self.service("worker")):
                found[node.index] = f"worker-{c['task'].split('.')[1]}"
        return found if len(found) == 2 else None

    def chief_node(self) -> int | None:
        found = [n.index for n in self.cluster.nodes if n.pid and n.running(self.service("chief"))]
        return found[0] if len(found) == 1 else None

    def logs(self, role) -> str:
        proc = self.cluster.manager.docker("service", "logs", "--raw", "--no-trunc", self.service(role),
                                           check=False, timeout=60)
        return proc.stdout + proc.stderr

    def trials(self) -> list[dict]:
        return list(csv.DictReader(open(self.share / "results" / self.project / "trials.csv")))

    def remove(self) -> None:
        self.cluster.manager.docker("stack", "rm", self.name, check=False)
        for node in self.cluster.nodes:
            if node.pid:
                wait_until(lambda n=node: not n.docker("ps", "-aq", "--filter",
                                                       f"label=com.docker.stack.namespace={self.name}",
                                                       check=False).stdout.strip(), 90, interval=1,
                           what=f"{self.name}'s containers to go from {node.name}")


def next_attempt(holding, before):
    """`holding` when it is another attempt than `before`."""
    return holding if holding not in (None, before) else None


def end_of(events, trial, attempt):
    return next((e for e in events if e["event"] == "end" and e["trial"] == trial and e["attempt"] == attempt), None)


def start_of(events, trial, attempt):
    return next((e for e in events if e["event"] == "start" and e["trial"] == trial and e["attempt"] == attempt), None)


def attempt_files(share, project, trial, attempt) -> dict[str, int]:
    """Path -> mtime of every file one attempt wrote: its state folder (checkpoint, build config)
    and its TensorBoard runs (attempt 1's are the trial's own folder, later ones `attempt<k>/`)."""
    folders = [share / "state" / project / f"trial_{trial}" / f"attempt{attempt}"]
    logs = share / "logs" / project / trial
    folders.append(logs if attempt == 1 else logs / f"attempt{attempt}")
    found = {}
    for folder in folders:
        for d, dirs, fs in os.walk(folder):
            if attempt == 1 and d == str(logs):
                dirs[:] = [x for x in dirs if not re.fullmatch(r"attempt[0-9]+", x)]
            found.update({os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for f in fs})
    return found


PROBE = """
import grpc, socket, sys, time
deadline = time.monotonic() + 120
while True:  # the chief must be there (its port open) for a refusal to mean anything
    try:
        socket.create_connection(("chief", 8000), timeout=2).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(1)
ca = open("/run/secrets/ca.pem", "rb").read()
refused = 0
for tls in (False, True):
    if tls:  # trusts the cluster's CA, but has no client certificate
        channel = grpc.secure_channel("chief:8000", grpc.ssl_channel_credentials(root_certificates=ca),
                                      options=[("grpc.ssl_target_name_override", "ktcluster-chief")])
    else:
        channel = grpc.insecure_channel("chief:8000")
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
        channel.unary_unary("/ktcluster.Cluster/Heartbeat")(b"", timeout=5)
        print("served", "tls" if tls else "plaintext")
    except grpc.FutureTimeoutError:
        refused += 1
        print("refused", "tls" if tls else "plaintext", "(never ready)")
    except grpc.RpcError as exc:
        print("rpc", "tls" if tls else "plaintext", exc.code(), exc.details())
        refused += exc.code() == grpc.StatusCode.UNAVAILABLE
sys.exit(7 if refused == 2 else 1)
"""


class Probe:
    """A one-off service on node 2, on the stack's overlay network, without a certificate: it
    waits for the chief's port, then tries plaintext and TLS without a client certificate."""

    def __init__(self, cluster, s):
        self.cluster, self.name = cluster, f"{s.name}_probe"
        cluster.manager.docker("service", "create", "--detach", "--name", self.name, "--network",
                               f"{s.name}_default", "--restart-condition", "none", "--constraint",
                               "node.role == manager", "--secret", f"source={s.name}_tls_ca,target=ca.pem",
                               f"ktcluster:{cluster.image_tag}", "python", "-c", PROBE)

    def ended(self) -> dict | None:
        tasks = self.cluster.tasks(self.name)
        if not tasks or tasks[0]["CurrentState"].split()[0] not in ("Complete", "Failed"):
            return None
        logs = self.cluster.manager.docker("service", "logs", "--raw", self.name, check=False).stdout
        return {"task": tasks[0], "logs": logs}

    def remove(self) -> None:
        self.cluster.manager.docker("service", "rm", self.name, check=False)

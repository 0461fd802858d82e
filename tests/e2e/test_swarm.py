"""The stack on a real single-node Swarm (the tests' own engine, tests/e2e/swarm.py, with three fake
GPUs): `docker stack deploy` with one GPU per worker, `docker service scale` mid-search (a fourth
worker finds no free GPU and stays Pending), `docker kill` of a worker task's container and of the
chief task's container; every trial once and COMPLETED, chief and workers end Complete and are not
restarted; `docker stack rm`, volumes removed. Then the stack again with mutual TLS (secrets).
The swarm is left and the engine stopped at the end, also on failure."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.e2e import swarm
from tests.e2e.compose import new_stack
from tests.procs import free_port, http_json, wait_until

MAX_TRIALS = 10
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
TLS_TRIALS = 4
SETTINGS = dict(KTC_DATASET="digits", KTC_EPOCHS=30, KTC_SEED=3, KTC_TF_THREADS=1, KTC_STOP_GRACE_SECONDS=10,
                KTC_LEASE_SECONDS=8, KTC_HEARTBEAT_SECONDS=1, KTC_CHIEF_TIMEOUT_SECONDS=600, KTC_WORKERS=2)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    swarm.require_tools("the Swarm end-to-end test")
    # The machine's engine builds (or reuses) the image for this tree, as for the Compose tests.
    builder = new_stack("ktcswbuild", tmp_path_factory.mktemp("swbuild"))
    builder.ensure_image()
    image = f"ktcluster:{builder.env['KTC_IMAGE_TAG']}"
    eng = swarm.Engine()
    try:
        eng.start()
        eng.load_image(image)
        eng.image_tag = builder.env["KTC_IMAGE_TAG"]
        yield eng
    finally:
        eng.stop()


class Deployed:
    """One stack on the tests' engine; `remove()` is `docker stack rm` plus its volumes."""

    def __init__(self, engine, name, tmp, files, **settings):
        self.engine, self.name, self.tmp = engine, name, tmp
        self.project = settings.setdefault("KTC_PROJECT", name)
        (tmp / "results").mkdir(exist_ok=True)
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KTC_", "KERASTUNER_"))}
        env.update(DOCKER_HOST=swarm.SOCKET, KTC_IMAGE_TAG=engine.image_tag, KTC_TENSORBOARD_PORT=str(self.port),
                   KTC_RESULTS_HOST_DIR=str(tmp / "results"),
                   **{k: str(v) for k, v in settings.items()})
        args = [a for f in files for a in ("-c", os.path.join(ROOT, f))]
        proc = subprocess.run(["docker", "stack", "deploy", "--detach=true", "--resolve-image", "never", *args, name],
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr

    def service(self, role):
        return f"{self.name}_{role}"

    def chief_log(self):
        return self.engine.logs(self.service("chief"))

    def latest_tasks(self, role) -> dict[str, dict]:
        """Slot ('1', '2', ...) -> its newest task (`docker service ps` lists newest first per slot)."""
        latest = {}
        for task in self.engine.tasks(self.service(role)):
            if task["Name"].startswith(self.name):  # history entries start with "\\_ "
                latest.setdefault(task["Name"].rsplit(".", 1)[-1], task)
        return latest

    def wait_all_complete(self, roles, timeout):
        def done():
            states = [t["CurrentState"].split()[0] for r in roles for t in self.latest_tasks(r).values()]
            return states and all(s == "Complete" for s in states)
        try:
            wait_until(done, timeout, interval=2, what=f"{roles} Complete")
        except AssertionError:
            raise AssertionError(f"{[self.engine.tasks(self.service(r)) for r in roles]}\n{self.chief_log()[-4000:]}")

    def journal(self) -> list[dict]:
        path = os.path.join(swarm.DATA_ROOT, "volumes", f"{self.name}_state", "_data", self.project,
                            "ktcluster-runs.jsonl")
        return [json.loads(line) for line in open(path)]

    def trials(self) -> list[dict]:
        return list(csv.DictReader(open(self.tmp / "results" / self.project / "trials.csv")))

    def remove(self) -> list[str]:
        """`docker stack rm`, then the stack's volumes; returns the volumes still there (none)."""
        self.engine.docker("stack", "rm", self.name, check=False)
        wait_until(lambda: not self.engine.docker("ps", "-aq", "--filter",
                                                  f"label=com.docker.stack.namespace={self.name}").stdout.strip(),
                   90, interval=1, what=f"{self.name}'s containers to go")
        volumes = [f"{self.name}_{v}" for v in ("state", "logs", "data")]
        self.engine.docker("volume", "rm", *volumes, check=False)
        listed = self.engine.docker("volume", "ls", "-q", "--filter", f"name={self.name}_").stdout.split()
        return listed


def _task_container(deployed, role, slot) -> str:
    """The running container of `role`'s task in `slot`."""
    def find():
        out = deployed.engine.docker("ps", "--filter", f"label=com.docker.swarm.service.name={deployed.service(role)}",
                                     "--filter", "status=running", "--format",
                                     '{{.ID}} {{.Label "com.docker.swarm.task.name"}}').stdout
        for line in out.splitlines():
            cid, task_name = line.split()
            if task_name.split(".")[1] == str(slot):
                return cid
        return None
    return wait_until(find, 60, interval=1, what=f"a running {role} task in slot {slot}")


def _three_running_one_pending(deployed):
    tasks = deployed.latest_tasks("worker")
    states = {slot: t["CurrentState"].split()[0] for slot, t in tasks.items()}
    if sorted(states.values()) != ["Pending", "Running", "Running", "Running"]:
        return None
    gpus = _running_gpus(deployed)
    pending = next(t for t in tasks.values() if t["CurrentState"].startswith("Pending"))
    return {"gpus": gpus, "pending": pending} if len(gpus) == 3 else None


def _running_gpus(deployed) -> dict[str, str]:
    """KERASTUNER_TUNER_ID -> DOCKER_RESOURCE_GPU of every running worker container."""
    gpus = {}
    for c in deployed.engine.containers(deployed.service("worker")):
        env = dict(e.split("=", 1) for e in c["Config"]["Env"])
        if c["State"]["Running"]:
            gpus[env["KERASTUNER_TUNER_ID"]] = env.get("DOCKER_RESOURCE_GPU")
    return gpus


@pytest.fixture(scope="module")
def searched(engine, tmp_path_factory):
    """The GPU stack through scaling and both kills, to the end; what the tests look at."""
    tmp = tmp_path_factory.mktemp("swarm")
    name = f"ktcsw{os.getpid()}"
    seen = {}
    deployed = Deployed(engine, name, tmp, ["stack.yaml", "stack.gpu.yaml"], KTC_MAX_TRIALS=MAX_TRIALS,
                        KTC_PROJECT="swarm", **SETTINGS)
    try:
        wait_until(lambda: "-> worker-1 (attempt 1)" in deployed.chief_log(), 480, interval=2,
                   what="worker-1's first trial")
        engine.docker("service", "scale", "--detach", f"{deployed.service('worker')}=4")
        # Three GPUs, four workers: one of the two new slots gets the free GPU, the other waits.
        seen["scaled"] = wait_until(lambda: _three_running_one_pending(deployed), 300, interval=2,
                                    what="3 workers running and 1 pending after scaling to 4")
        joined = next(slot for slot in ("3", "4") if slot != seen["scaled"]["pending"]["Name"].rsplit(".", 1)[-1])
        seen["joined"] = f"worker-{joined}"
        wait_until(lambda: f"{seen['joined']} registered" in deployed.chief_log(), 300, interval=2,
                   what=f"{seen['joined']} to join")
        victim = _task_container(deployed, "worker", 1)
        engine.docker("kill", victim)
        wait_until(lambda: deployed.chief_log().count(" COMPLETED by ") >= 2, 300, interval=2,
                   what="two completed trials")
        engine.docker("kill", _task_container(deployed, "chief", 1))
        seen["chief_killed"] = time.monotonic()
        deployed.wait_all_complete(["chief"], timeout=600)
        deployed.wait_all_complete(["worker"], timeout=300)
        time.sleep(8)  # past the restart delay (5 s): nothing that finished may come back
        seen["tb_runs"] = wait_until(lambda: _tb_runs(deployed.port), 60, interval=2, what="TensorBoard on the node")
        seen.update(chief_tasks=engine.tasks(deployed.service("chief")),
                    worker_tasks=engine.tasks(deployed.service("worker")),
                    workers=engine.containers(deployed.service("worker")),
                    chief_log=deployed.chief_log(), journal=deployed.journal(), trials=deployed.trials())
        seen["worker_logs"] = {c["Id"]: engine.docker("logs", c["Id"]).stdout for c in seen["workers"]}
    finally:
        print(deployed.chief_log()[-6000:])
        (tmp / "chief.log").write_text(deployed.chief_log())  # whole logs, for a failure's post-mortem
        for c in engine.containers(deployed.service("worker")):
            (tmp / f"worker-{c['Id'][:12]}.log").write_text(engine.docker("logs", c["Id"], check=False).stdout)
        seen["volumes_left"] = deployed.remove()
    yield seen


def _tb_runs(port):
    try:
        return http_json(f"http://{swarm.NODE_IP}:{port}/data/runs")
    except OSError:
        return None


def _states(tasks, slot=None):
    """The states of the tasks (of one slot) that ran: "Rejected" placements before a run are left out."""
    states = [t["CurrentState"].split()[0] for t in tasks if slot is None or t["Name"].endswith(f".{slot}")]
    return [s for s in states if s != "Rejected"]


def test_every_trial_once_and_completed(searched):
    finals = [e["trial"] for e in searched["journal"] if e["event"] == "end" and e["status"] != "RETRY"]
    assert sorted(map(int, finals)) == list(range(MAX_TRIALS))  # ids are zero-padded: "00".."09"
    rows = searched["trials"]
    assert sorted(int(r["trial_id"]) for r in rows) == list(range(MAX_TRIALS))
    assert {r["status"] for r in rows} == {"COMPLETED"}


def _first_time(log: str, text: str) -> str | None:
    """The earliest timestamp of a log line holding `text` (`docker service logs` gives each
    task's lines in a block, the rescheduled chief's possibly before the killed one's)."""
    times = [line[:23] for line in log.splitlines() if text in line and TIMESTAMP.match(line)]
    return min(times) if times else None


def test_workers_are_worker_slot_and_the_scaled_one_joined_mid_search(searched):
    log = searched["chief_log"]
    joined = searched["joined"]
    registered, finished = _first_time(log, f"{joined} registered"), _first_time(log, "search finished")
    assert registered and finished and registered < finished, (registered, finished)
    assert all(re.fullmatch(r"worker-[1-4]", r["worker"]) for r in searched["trials"])


def test_killed_chief_was_rescheduled_and_resumed(searched):
    states = _states(searched["chief_tasks"])
    assert sorted(states) == ["Complete", "Failed"], searched["chief_tasks"]  # killed once, then finished
    assert "resumed project swarm" in searched["chief_log"]
    assert f"search finished: {MAX_TRIALS} completed, 0 failed of {MAX_TRIALS}" in searched["chief_log"]
    # The trials running when the chief was killed went on with their workers, which found the
    # rescheduled chief (a new address under the same name) within the lease it kept them for:
    # the only attempt taken away is the killed worker's.
    lost = [e for e in searched["journal"] if e["event"] == "end" and e["status"] == "RETRY"]
    assert len(lost) <= 1, (lost, searched["chief_log"][-4000:])


def test_killed_worker_came_back_in_its_slot_and_nothing_finished_was_restarted(searched):
    tasks = searched["worker_tasks"]
    assert sorted(_states(tasks, slot=1)) == ["Complete", "Failed"], tasks
    for slot in (2, 3, 4):
        assert _states(tasks, slot=slot) == ["Complete"], tasks


def test_each_running_worker_had_its_own_gpu_and_the_fourth_stayed_pending(searched):
    gpus = searched["scaled"]["gpus"]
    assert set(gpus) == {"worker-1", "worker-2", searched["joined"]}, gpus
    assert sorted(gpus.values()) == sorted(swarm.FAKE_GPUS)  # three GPUs, three workers, all distinct
    pending = searched["scaled"]["pending"]
    assert "insufficient resources" in pending["Error"], pending


def test_each_worker_trained_on_the_gpu_it_was_given(searched):
    assert len(searched["workers"]) == 5  # slots 1 (twice), 2, 3, 4
    for container in searched["workers"]:
        env = dict(e.split("=", 1) for e in container["Config"]["Env"])
        tuner_id, gpu = env["KERASTUNER_TUNER_ID"], env["DOCKER_RESOURCE_GPU"]
        assert gpu in swarm.FAKE_GPUS
        assert f"{tuner_id} trains on CPU [CUDA_VISIBLE_DEVICES={gpu}] (Swarm gave DOCKER_RESOURCE_GPU={gpu}" \
            in searched["worker_logs"][container["Id"]]


def test_tensorboard_published_on_the_node(searched):
    trials = {r["trial_id"]: r for r in searched["trials"]}
    accepted = {f"{t}/execution0" if r["attempts"] == "1" else f"{t}/attempt{r['attempts']}/execution0"
                for t, r in trials.items()}  # each trial's result's run: its curves, graphs and session
    assert len(trials) == MAX_TRIALS and accepted <= set(searched["tb_runs"])


def test_stack_rm_leaves_no_volumes(searched):
    assert searched["volumes_left"] == []


# -- the same stack with mutual TLS on the oracle, its files as swarm secrets -------------------

@pytest.fixture(scope="module")
def tls_searched(engine, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("swarmtls")
    tls_dir = tmp / "tls"
    subprocess.run([sys.executable, "-m", "shared.tls", "make", str(tls_dir)],
                   cwd=ROOT, check=True, capture_output=True, timeout=60)
    name = f"ktcswtls{os.getpid()}"
    deployed = Deployed(engine, name, tmp, ["stack.yaml", "stack.tls.yaml"], KTC_TLS_DIR=str(tls_dir),
                        KTC_MAX_TRIALS=TLS_TRIALS, KTC_PROJECT="swarmtls", **{**SETTINGS, "KTC_EPOCHS": 20})
    seen = {}
    try:
        # Probe while the first trials run (the chief exits when the search is over).
        wait_until(lambda: " -> worker-" in deployed.chief_log(), 480, interval=2, what="a first TLS trial")
        chief = _task_container(deployed, "chief", 1)
        seen["plaintext"] = engine.docker("exec", chief, "python", "-c", PLAINTEXT_PROBE, check=False, timeout=60)
        seen["health"] = engine.docker("exec", chief, "python", "-m", "chief", "health", check=False, timeout=180)
        deployed.wait_all_complete(["chief", "worker"], timeout=300)
        seen.update(chief_log=deployed.chief_log(), trials=deployed.trials(),
                    chief_tasks=engine.tasks(deployed.service("chief")))
    finally:
        print(deployed.chief_log()[-4000:])
        seen["volumes_left"] = deployed.remove()
    yield seen


# A plaintext gRPC client inside the chief's own container: the TLS-only port must not serve it.
PLAINTEXT_PROBE = """
import grpc, sys
channel = grpc.insecure_channel("127.0.0.1:8000")
try:
    grpc.channel_ready_future(channel).result(timeout=5)
except grpc.FutureTimeoutError:
    sys.exit(7)
print("plaintext channel became READY")
"""


def test_tls_stack_completes_every_trial(tls_searched):
    rows = tls_searched["trials"]
    assert sorted(int(r["trial_id"]) for r in rows) == list(range(TLS_TRIALS))
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert _states(tls_searched["chief_tasks"]) == ["Complete"]


def test_tls_stack_refuses_a_plaintext_client_and_accepts_its_own_certificate(tls_searched):
    probe, health = tls_searched["plaintext"], tls_searched["health"]
    assert probe.returncode == 7, probe.stdout + probe.stderr
    assert health.returncode == 0, health.stdout + health.stderr  # same port, with chief.pem: served


def test_tls_stack_leaves_no_volumes(tls_searched):
    assert tls_searched["volumes_left"] == []

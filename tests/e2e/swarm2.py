"""Two Docker engines of the tests' own, joined as a two-node swarm, standing in for two machines.

Each node is a dockerd in its own network namespace (own data-root, exec-root, socket and pid
file, as tests/e2e/swarm.py does for one), with its own address on one bridge the tests create
in a namespace of its own (SWITCH, 10.232.0.1: the host's firewall, where the machine's engine
drops forwarded traffic, never sees it); node 1 is 10.232.0.11, node 2 10.232.0.12, addresses of
these namespaces only. The mount namespace is the host's, so one host folder bind-mounted on both
engines is the shared volume, as an NFS share is on real machines. The data-roots persist between
runs (the image is loaded once); `start()` drops what a previous run left in them.

Who manages: a swarm's raft needs a majority of its managers, so with two managers the loss of
either stops all scheduling; with one, the loss of the manager does too. So node 2 is the only
manager and node 1 a worker: the chief is placed on node 1 by a node label (`ktc.chief=true`,
stack.yaml's KTC_CHIEF_CONSTRAINT), and when node 1 dies the manager on node 2 reschedules it
there once node 2 carries the label as well. When node 2 (the manager) dies, the tasks on node 1
keep running (swarm workers run on without a manager); nothing is scheduled until it is back.

Faults: `kill()` ends a node's engine with its containers (SIGKILL to every container's init,
then to dockerd, its containerd and shims, found by their command lines naming this node's own
run folder); `cut()`/`heal()` drop and restore traffic between the nodes with iptables in both
namespaces. `cleanup()` removes every namespace, engine, mount, bridge and rule of a previous
run that died; `stop()` does the same for this one (rules go with their namespaces).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

from tests.e2e.swarm import _run, copy_image

PREFIX = "ktcsw2"
SWITCH = f"{PREFIX}-switch"  # the bridge lives in a namespace of its own: no host firewall rule applies
BRIDGE, BRIDGE_IP = f"{PREFIX}br", "10.232.0.1"
CUT_COMMENT = f"{PREFIX}-cut"


class Node:
    """One engine: `start()`, `kill()` (a lost machine), `start()` again (it comes back)."""

    def __init__(self, index: int):
        self.index = index
        self.name = f"{PREFIX}-n{index}"
        self.ip = f"10.232.0.{10 + index}"
        self.netns, self.veth = self.name, f"{PREFIX}v{index}"
        self.data_root, self.run_dir = f"/var/lib/{self.name}", f"/var/run/{self.name}"
        self.socket, self.pidfile = f"unix://{self.run_dir}/docker.sock", f"{self.run_dir}/dockerd.pid"
        self.log = f"/var/log/{self.name}.log"
        self.env = {**os.environ, "DOCKER_HOST": self.socket}
        self.pid: int | None = None

    def docker(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        return _run("docker", *args, timeout=timeout, check=check, env=self.env)

    def netns_exec(self, *args, check=True) -> subprocess.CompletedProcess:
        return _run("ip", "netns", "exec", self.netns, *args, check=check)

    def plug(self) -> None:
        """The namespace and its veth on the bridge."""
        _run("ip", "netns", "add", self.netns)
        _run("ip", "netns", "exec", SWITCH, "ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
             "netns", self.netns)
        _run("ip", "netns", "exec", SWITCH, "ip", "link", "set", self.veth, "master", BRIDGE)
        _run("ip", "netns", "exec", SWITCH, "ip", "link", "set", self.veth, "up")
        for cmd in (("ip", "link", "set", "lo", "up"), ("ip", "addr", "add", f"{self.ip}/24", "dev", "eth0"),
                    ("ip", "link", "set", "eth0", "up"), ("ip", "route", "add", "default", "via", BRIDGE_IP)):
            self.netns_exec(*cmd)

    def start(self, fresh: bool = False) -> float:
        """Start dockerd; seconds until it answers. A killed engine's swarm state is on disk, so it
        rejoins its swarm; `fresh` drops that state first (a previous run's swarm is gone)."""
        began = time.monotonic()
        os.makedirs(self.run_dir, exist_ok=True)
        if fresh:
            shutil.rmtree(os.path.join(self.data_root, "swarm"), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.pidfile)  # a killed dockerd leaves it
        # nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup mounts.
        args = ["nsenter", f"--net=/var/run/netns/{self.netns}", "dockerd", "--data-root", self.data_root,
                "--exec-root", f"{self.run_dir}/exec", "--pidfile", self.pidfile, "-H", self.socket]
        with open(self.log, "a") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True,
                                    env={**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"})
        self.pid = proc.pid
        deadline = time.monotonic() + 90
        while not self._answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = open(self.log).read()[-3000:]
                raise AssertionError(f"{self.name}'s dockerd did not come up; {self.log}:\n{tail}")
            time.sleep(0.5)
        return time.monotonic() - began

    def _answers(self) -> bool:
        try:
            return self.docker("info", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:  # the API waits while the swarm component starts
            return False

    def load_image(self, image: str) -> None:
        copy_image(self, image)

    def kill(self) -> list[int]:
        """The machine is lost: SIGKILL to every container's init (its whole PID namespace goes),
        then to dockerd, containerd and the shims. Returns the PIDs killed."""
        ids = self.docker("ps", "-q", check=False, timeout=30).stdout.split()
        pids = []
        if ids:
            out = self.docker("inspect", "--format", "{{.State.Pid}}", *ids, check=False, timeout=30).stdout
            pids = [int(p) for p in out.split() if p.isdigit() and int(p) > 0]
        pids += _engine_pids(self.run_dir)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        self.pid = None
        return pids

    def stop(self) -> None:
        """End the engine (SIGTERM, SIGKILL after 30 s), then its mounts and its namespace."""
        with contextlib.suppress(Exception):
            self.docker("swarm", "leave", "--force", check=False, timeout=30)
        _end_engine(self.run_dir, self.data_root)
        self.pid = None
        _run("ip", "netns", "del", self.netns, check=False)

    def running(self, service: str) -> list[dict]:
        """This node's running containers of `service`: id and swarm task name."""
        out = self.docker("ps", "--filter", f"label=com.docker.swarm.service.name={service}", "--format",
                          '{{.ID}} {{.Label "com.docker.swarm.task.name"}}', check=False, timeout=30).stdout
        return [dict(zip(("id", "task"), line.split())) for line in out.splitlines() if line.strip()]


class Cluster:
    """Node 1 (a worker, labelled to hold the chief) and node 2 (the manager) on one bridge."""

    def __init__(self):
        self.nodes = (Node(1), Node(2))
        self.node_ids: dict[int, str] = {}

    @property
    def manager(self) -> Node:
        return self.nodes[1]

    def start(self, image: str) -> None:
        cleanup()
        _run("ip", "netns", "add", SWITCH)
        for cmd in (("ip", "link", "set", "lo", "up"), ("ip", "link", "add", BRIDGE, "type", "bridge"),
                    ("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE), ("ip", "link", "set", BRIDGE, "up")):
            _run("ip", "netns", "exec", SWITCH, *cmd)
        for node in self.nodes:
            node.plug()
            node.start(fresh=True)
            # What a previous run's stacks left in this engine of ours (a killed node keeps them).
            old = node.docker("ps", "-aq").stdout.split()
            if old:
                node.docker("rm", "-f", *old, check=False, timeout=300)
            volumes = node.docker("volume", "ls", "-q").stdout.split()
            if volumes:
                node.docker("volume", "rm", "-f", *volumes, check=False, timeout=120)
        # Both engines load the image at once (I/O bound).
        loads = [_spawn(lambda n=node: n.load_image(image)) for node in self.nodes]
        for load in loads:
            load()
        manager, worker = self.nodes[1], self.nodes[0]
        # A node silent for 2-3 heartbeats (`--dispatcher-heartbeat`, 5 s here) is declared down and
        # its tasks rescheduled; each test sets the period it needs (`swarm update`).
        manager.docker("swarm", "init", "--advertise-addr", manager.ip)
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        worker.docker("swarm", "join", "--token", token, f"{manager.ip}:2377")
        for node in self.nodes:
            self.node_ids[node.index] = node.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        self.label(1, "ktc.chief", "true")

    def label(self, index: int, key: str, value: str) -> None:
        self.manager.docker("node", "update", "--label-add", f"{key}={value}", self.node_ids[index])

    def node_state(self, index: int) -> str:
        return self.manager.docker("node", "inspect", "--format", "{{.Status.State}}", self.node_ids[index],
                                   check=False, timeout=30).stdout.strip()

    def cut(self) -> None:
        """Drop every packet between the nodes, in both namespaces (INPUT and OUTPUT)."""
        for node, other in ((self.nodes[0], self.nodes[1]), (self.nodes[1], self.nodes[0])):
            for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
                node.netns_exec("iptables", "-I", chain, flag, other.ip, "-m", "comment", "--comment",
                                CUT_COMMENT, "-j", "DROP")

    def heal(self) -> None:
        for node, other in ((self.nodes[0], self.nodes[1]), (self.nodes[1], self.nodes[0])):
            for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
                node.netns_exec("iptables", "-D", chain, flag, other.ip, "-m", "comment", "--comment",
                                CUT_COMMENT, "-j", "DROP", check=False)

    def tasks(self, service: str) -> list[dict]:
        """Every task of `service` (history included), as the manager sees it."""
        out = self.manager.docker("service", "ps", service, "--no-trunc", "--format", "{{json .}}",
                                  check=False, timeout=60).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        _run("ip", "netns", "del", SWITCH, check=False)


def cleanup() -> None:
    """What a previous run that was killed left: engines, mounts, namespaces, veths, the bridge."""
    for index in (1, 2):
        Node(index).stop()
    _run("ip", "netns", "del", SWITCH, check=False)


def leftovers() -> list[str]:
    """Anything of ours still on the machine (empty after `stop()`)."""
    found = [f"netns {n}" for n in _run("ip", "netns", "list").stdout.split() if n.startswith(PREFIX)]
    found += [f"link {line.split(':')[1].strip()}" for line in _run("ip", "-o", "link").stdout.splitlines()
              if PREFIX in line.split(":")[1]]
    found += [f"process {pid}" for index in (1, 2) for pid in _engine_pids(f"/var/run/{PREFIX}-n{index}")]
    found += [f"mount {m}" for m in _mounts(f"/var/run/{PREFIX}-") + _mounts(f"/var/lib/{PREFIX}-")]
    return found


def _spawn(fn):
    """Run `fn` in a thread; the returned callable joins it and re-raises its exception."""
    import threading

    box = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the joining thread
            box["error"] = exc
    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join():
        thread.join(timeout=900)
        if "error" in box:
            raise box["error"]
    return join


def _engine_pids(run_dir: str) -> list[int]:
    """dockerd, containerd and shims of one node: their command lines name its own run folder."""
    pids = []
    needles = {run_dir.encode() + b"/", os.path.realpath(run_dir).encode() + b"/"}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            if any(n in cmdline for n in needles) and cmdline.split(b"\0")[0].rsplit(b"/", 1)[-1] in (
                    b"dockerd", b"containerd", b"containerd-shim-runc-v2", b"containerd-shim", b"nsenter"):
                pids.append(int(entry))
    return pids


def _end_engine(run_dir: str, data_root: str) -> None:
    """SIGTERM dockerd (it stops its containers and containerd), SIGKILL what is left after 30 s,
    then unmount what a killed engine left under its folders."""
    pids = _engine_pids(run_dir)
    for pid in pids:
        with contextlib.suppress(OSError):
            if open(f"/proc/{pid}/comm").read().strip() == "dockerd":
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.3)
    for pid in _engine_pids(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _engine_pids(run_dir):
        time.sleep(0.3)
    for mount in sorted(_mounts(run_dir) + _mounts(data_root), key=len, reverse=True):
        _run("umount", "-l", mount, check=False)


def _mounts(prefix: str) -> list[str]:
    """Mount points under `prefix` (/var/run is a link to /run: mountinfo names the real path)."""
    real = os.path.join(os.path.realpath(os.path.dirname(prefix)), os.path.basename(prefix))
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4] for line in info]
    return [p for p in points if p.startswith((prefix, real))]


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = [line for line in open(f"/proc/{pid}/status") if line.startswith("State:")]
    except OSError:
        return False
    return bool(state) and "Z" not in state[0].split()[1]

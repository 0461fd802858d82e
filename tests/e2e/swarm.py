"""A Docker engine of the tests' own for Swarm: its own network namespace, data-root, exec-root,
socket and pid file, and fake GPUs declared as generic resources (`--node-generic-resource`).

Why a second engine: generic resources are a daemon setting (a restart), `docker swarm init` and
`leave` change a whole engine, and the machine's engine is shared. In its own network namespace it
has its own bridges, iptables and `docker_gwbridge`, so nothing clashes with the machine's engine;
the mount namespace is the host's, so bind mounts and the socket work as usual. It reaches the host
over a veth pair (the host is 10.231.0.1, the engine's node 10.231.0.2): host-mode published ports
answer on 10.231.0.2. Its data-root persists between runs so that the image is loaded only once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

NAME = "ktcluster-swarm-e2e"
NETNS = NAME
VETH = "ktcswe0"  # host side; the engine's side is eth0 in the namespace
HOST_IP, NODE_IP = "10.231.0.1", "10.231.0.2"
DATA_ROOT = f"/var/lib/{NAME}"
RUN_DIR = f"/var/run/{NAME}"
SOCKET = f"unix://{RUN_DIR}/docker.sock"
PIDFILE = f"{RUN_DIR}/dockerd.pid"
LOG = f"/var/log/{NAME}.log"
FAKE_GPUS = ("fake-gpu-0", "fake-gpu-1", "fake-gpu-2")


def missing_tools() -> list[str]:
    """What this machine lacks to start the engine (root, ip, nsenter, dockerd)."""
    missing = [tool for tool in ("ip", "nsenter", "dockerd", "docker") if not shutil.which(tool)]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def _run(*args, timeout=60, check=True, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


IMAGE_SOURCE = "unix:///var/run/docker.sock"  # the machine's engine, where the image is built


def copy_image(engine, image: str) -> None:
    """Copy `image` from the machine's engine into `engine` (one of the tests' own: its `docker()`
    and `env`) by `docker save | docker load`, unless it has it; drop its older ktcluster tags."""
    if engine.docker("image", "inspect", image, check=False).returncode != 0:
        save = subprocess.Popen(["docker", "-H", IMAGE_SOURCE, "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "load"], stdin=save.stdout, env=engine.env, capture_output=True,
                              text=True, timeout=600)
        save.stdout.close()
        assert save.wait(timeout=60) == 0 and load.returncode == 0, load.stderr[-2000:]
    for tag in engine.docker("images", "ktcluster", "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
        if tag != image:
            engine.docker("rmi", tag, check=False)


def require_tools(what: str, extra=()) -> None:
    """Skip the calling test (fail it under KTC_E2E_REQUIRED=1) if this machine lacks what `what`
    (e.g. "the Swarm end-to-end test") needs: `missing_tools()` and the commands in `extra`."""
    import pytest

    from tests.e2e.compose import REQUIRED

    missing = missing_tools() + [tool for tool in extra if not shutil.which(tool)]
    if missing:
        if REQUIRED:
            pytest.fail(f"{what} needs {', '.join(missing)} (KTC_E2E_REQUIRED=1)")
        pytest.skip(f"{what} needs {', '.join(missing)}")


class Engine:
    """The tests' engine: `start()` it (a swarm manager with FAKE_GPUS), `stop()` it (leaves the
    swarm, ends dockerd by its PID, removes the namespace). Every wait is bounded."""

    def __init__(self):
        self.env = {**os.environ, "DOCKER_HOST": SOCKET}
        self.pid: int | None = None

    def docker(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        return _run("docker", *args, timeout=timeout, check=check, env=self.env)

    def start(self) -> None:
        self._stop_leftover()
        os.makedirs(RUN_DIR, exist_ok=True)
        _run("ip", "netns", "add", NETNS)
        _run("ip", "link", "add", VETH, "type", "veth", "peer", "name", "eth0", "netns", NETNS)
        _run("ip", "addr", "add", f"{HOST_IP}/24", "dev", VETH)
        _run("ip", "link", "set", VETH, "up")
        for cmd in (("ip", "link", "set", "lo", "up"), ("ip", "addr", "add", f"{NODE_IP}/24", "dev", "eth0"),
                    ("ip", "link", "set", "eth0", "up"), ("ip", "route", "add", "default", "via", HOST_IP)):
            _run("ip", "netns", "exec", NETNS, *cmd)
        # nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup mounts.
        # DOCKER_SERVICE_PREFER_OFFLINE_IMAGE: use the loaded image, no registry round trip per task.
        args = ["nsenter", f"--net=/var/run/netns/{NETNS}", "dockerd", "--data-root", DATA_ROOT,
                "--exec-root", f"{RUN_DIR}/exec", "--pidfile", PIDFILE, "-H", SOCKET,
                *[a for gpu in FAKE_GPUS for a in ("--node-generic-resource", f"GPU={gpu}")]]
        with open(LOG, "w") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"})
        self.pid = proc.pid
        deadline = time.monotonic() + 60
        while self.docker("info", check=False, timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"test dockerd did not come up; {LOG}:\n{open(LOG).read()[-3000:]}")
            time.sleep(1)
        self.docker("swarm", "leave", "--force", check=False)  # swarm state a crashed run left on disk
        self.docker("swarm", "init", "--advertise-addr", NODE_IP)

    def load_image(self, image: str) -> None:
        copy_image(self, image)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.docker("swarm", "leave", "--force", check=False, timeout=60)
        pid = self.pid or _pid_from_file()
        if pid:
            _end(pid)
        self.pid = None
        _run("ip", "netns", "del", NETNS, check=False)

    def _stop_leftover(self) -> None:
        """A previous run that died left its engine or namespace: end them first."""
        pid = _pid_from_file()
        if pid:
            with contextlib.suppress(Exception):
                self.docker("swarm", "leave", "--force", check=False, timeout=60)
            _end(pid)
        if os.path.exists(PIDFILE):
            os.remove(PIDFILE)
        _run("ip", "netns", "del", NETNS, check=False)
        _run("ip", "link", "del", VETH, check=False)

    # -- swarm views ------------------------------------------------------------------------------

    def tasks(self, service: str) -> list[dict]:
        """Every task of `service` (history included): slot, desired and current state, error, node."""
        out = self.docker("service", "ps", service, "--no-trunc", "--format", "{{json .}}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def containers(self, service: str) -> list[dict]:
        """`docker inspect` of every container (running or not) of `service`'s tasks."""
        ids = self.docker("ps", "-aq", "--filter", f"label=com.docker.swarm.service.name={service}").stdout.split()
        return json.loads(self.docker("inspect", *ids).stdout) if ids else []

    def logs(self, service: str) -> str:
        proc = self.docker("service", "logs", "--raw", "--no-trunc", service, check=False, timeout=60)
        return proc.stdout + proc.stderr


def _pid_from_file() -> int | None:
    try:
        pid = int(open(PIDFILE).read().strip())
    except (OSError, ValueError):
        return None
    try:
        return pid if open(f"/proc/{pid}/comm").read().strip() == "dockerd" else None
    except OSError:
        return None


def _end(pid: int, timeout: float = 45) -> None:
    """SIGTERM dockerd (it stops its containers and its containerd), SIGKILL after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.5)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(2)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = [line for line in open(f"/proc/{pid}/status") if line.startswith("State:")]
    except OSError:
        return False
    return bool(state) and "Z" not in state[0].split()[1]

"""Drive the real stack with `docker compose` from tests: image reuse by input hash, bounded waits."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time

from tests.conftest import ROOT

#: what goes into the image; its hash is the image tag, so an unchanged tree reuses the image
IMAGE_INPUTS = ("Dockerfile", ".dockerignore", "requirements.txt", "chief", "worker", "shared", "examples")


def image_tag(base_image: str, tensorflow: str) -> str:
    digest = hashlib.sha256(f"{base_image}\n{tensorflow}\n".encode())
    for item in IMAGE_INPUTS:
        path = os.path.join(ROOT, item)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, dirs, fs in os.walk(path) for f in fs
            if "__pycache__" not in d and not f.endswith(".pyc"))
        for name in files:
            digest.update(os.path.relpath(name, ROOT).encode())
            digest.update(open(name, "rb").read())
    return digest.hexdigest()[:16]


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    return probe.returncode == 0 and info.returncode == 0


REQUIRED = os.environ.get("KTC_E2E_REQUIRED") == "1"  # .ci/run sets it: no Docker is a failure there


def new_stack(prefix: str, tmp, **settings) -> "Stack":
    """A uniquely named stack on the image for this tree; skip (fail in CI) without Docker."""
    import pytest

    from tests.procs import free_port

    if not docker_available():
        if REQUIRED:
            pytest.fail("Docker with Compose v2 is required (KTC_E2E_REQUIRED=1) but is not usable")
        pytest.skip("Docker with Compose v2 is not available (run .ci/provision-docker.sh)")
    base = os.environ.get("KTC_BASE_IMAGE", "python:3.11-slim-bookworm")
    tensorflow = os.environ.get("KTC_TENSORFLOW", "tensorflow-cpu==2.21.0")
    env = {"KTC_BASE_IMAGE": base, "KTC_TENSORFLOW": tensorflow, "KTC_IMAGE_TAG": image_tag(base, tensorflow),
           "KTC_TENSORBOARD_PORT": str(free_port()), "KTC_RESULTS_HOST_DIR": str(tmp / "results"),
           **{k: str(v) for k, v in settings.items()}}
    return Stack(f"{prefix}{os.getpid()}", env)


class Stack:
    """One Compose project (unique name), torn down with `down -v` by `close()`."""

    def __init__(self, project: str, env: dict):
        self.project = project
        self.env = {**os.environ, **env, "KTC_COMPOSE_PROJECT": project}

    def compose(self, *args, timeout=600, check=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", "compose", "-p", self.project, *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def attached(self, log_path, *args) -> subprocess.Popen:
        """`docker compose up ARGS` as a user runs it (attached, output to `log_path`); the caller
        stops it (`stop_attached`)."""
        log = open(log_path, "w")
        try:
            return subprocess.Popen(["docker", "compose", "-p", self.project, "up", *args], cwd=ROOT,
                                    env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)
        finally:
            log.close()

    @staticmethod
    def stop_attached(proc: subprocess.Popen) -> int:
        """Ctrl-C for an attached `up` (it stops the stack's containers); its exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=30)

    def docker(self, *args, timeout=120) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=True)

    def ensure_image(self) -> None:
        """Build only when no image has this input hash yet."""
        image = f"ktcluster:{self.env['KTC_IMAGE_TAG']}"
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            self.compose("build", "chief", timeout=1800)

    def containers(self) -> list[dict]:
        out = self.compose("ps", "-a", "--format", "json").stdout
        lines = [line for line in out.splitlines() if line.strip()]
        if len(lines) == 1 and lines[0].startswith("["):
            return json.loads(lines[0])
        return [json.loads(line) for line in lines]

    def wait_exited(self, services: set[str], timeout: float) -> dict[str, int]:
        """Container name -> exit code, once every container of `services` has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mine = [c for c in self.containers() if c["Service"] in services]
            if mine and all(c["State"] == "exited" for c in mine):
                return {c["Name"]: int(c["ExitCode"]) for c in mine}
            time.sleep(2)
        raise AssertionError(f"{services} still running after {timeout:.0f}s:\n{self.logs()[-4000:]}")

    def logs(self, *services) -> str:
        return self.compose("logs", "--no-color", *services, check=False).stdout

    def close(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)

"""One build per `docker compose build` / `up`, on the real engine (issue #20 item 7: `build` on all
three services built the image three times, leaving two dangling ~2 GB images per build).

compose.yaml's own services are built, but every service that builds gets, through an override
file, a tiny context (`FROM scratch`, a label and a file with a fresh nonce): it is never in the
build cache, so each build Compose runs makes a distinct image, and the check costs seconds instead
of a TensorFlow image. The images are found by their label and removed afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from tests.conftest import ROOT
from tests.e2e.compose import REQUIRED, docker_available
from tests.procs import free_port

LABEL = "ktcluster.build-test"


def _require_docker():
    if not docker_available():
        if REQUIRED:
            pytest.fail("Docker with Compose v2 is required (KTC_E2E_REQUIRED=1) but is not usable")
        pytest.skip("Docker with Compose v2 is not available (run .ci/provision-docker.sh)")


@pytest.fixture
def tiny(tmp_path):
    """Compose with compose.yaml plus an override that gives each building service a tiny context;
    yields (compose(*args), images()) and removes the project and its images at the end."""
    _require_docker()
    nonce = uuid.uuid4().hex
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "nonce").write_text(nonce)
    (ctx / "Dockerfile").write_text(f"FROM scratch\nLABEL {LABEL}={nonce}\nCOPY nonce /nonce\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KTC_", "KERASTUNER_"))}
    env.update(KTC_IMAGE_TAG=f"buildtest-{nonce[:12]}", KTC_TENSORBOARD_PORT=str(free_port()),
               KTC_RESULTS_HOST_DIR=str(tmp_path / "results"))
    project = f"ktcbuild{os.getpid()}"

    def compose(*args, files=("compose.yaml",)):
        flags = [a for f in files for a in ("-f", f)]
        proc = subprocess.run(["docker", "compose", "-p", project, *flags, *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"docker compose {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    builders = [n for n, s in json.loads(compose("config", "--format", "json"))["services"].items() if s.get("build")]
    override = tmp_path / "tiny-build.yaml"
    override.write_text(json.dumps({"services": {n: {"build": {"context": str(ctx)}} for n in builders}}))

    def tiny_compose(*args):
        return compose(*args, files=("compose.yaml", str(override)))

    def images() -> list[tuple[str, str]]:
        """(image id, REPOSITORY:TAG) of every image this test's builds made, dangling ones too."""
        out = subprocess.run(["docker", "images", "-a", "--no-trunc", "--filter", f"label={LABEL}={nonce}",
                              "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        return sorted(tuple(line.split(" ", 1)) for line in out.splitlines() if line.strip())

    try:
        yield tiny_compose, images, f"ktcluster:{env['KTC_IMAGE_TAG']}"
    finally:
        subprocess.run(["docker", "compose", "-p", project, "down", "-v", "--remove-orphans", "--timeout", "5"],
                       cwd=ROOT, env=env, capture_output=True, timeout=120)
        ids = [i for i, _ in images()]
        if ids:
            subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True, timeout=120)


def test_one_compose_build_makes_one_tagged_image_and_no_dangling_one(tiny):
    compose, images, tag = tiny
    assert images() == []
    compose("build")
    made = images()
    assert len(made) == 1 and made[0][1] == tag, f"one build should make one image tagged {tag}: {made}"


def test_up_from_no_image_builds_once_and_every_role_runs_it(tiny):
    """`up` with no image yet (here `--no-start`, the tiny image cannot run) builds it once, pulls
    nothing, and creates every role, scaled workers included, on that one image."""
    compose, images, tag = tiny
    compose("up", "--no-start", "--scale", "worker=3")
    made = images()
    assert len(made) == 1 and made[0][1] == tag, made
    lines = [line for line in compose("ps", "-a", "--format", "json").splitlines() if line.strip()]
    containers = json.loads(lines[0]) if len(lines) == 1 and lines[0].startswith("[") else [json.loads(x) for x in lines]
    assert sorted(c["Service"] for c in containers) == ["chief", "tensorboard", "worker", "worker", "worker"]
    image_ids = {subprocess.run(["docker", "inspect", "-f", "{{.Image}}", c["Name"]], capture_output=True, text=True,
                                timeout=60, check=True).stdout.strip() for c in containers}
    assert image_ids == {made[0][0]}, (image_ids, made)

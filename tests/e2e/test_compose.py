"""The whole product in real containers: build, `up --scale worker=2`, check from the host, `down -v`."""

import csv
import json
import os

import pytest

from tests.e2e.compose import Stack, docker_available, image_tag
from tests.procs import free_port, hparams_session_groups, http_json, wait_until

MAX_TRIALS = 6
REQUIRED = os.environ.get("KTC_E2E_REQUIRED") == "1"  # .ci/run sets it: no Docker is a failure there


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not docker_available():
        if REQUIRED:
            pytest.fail("Docker with Compose v2 is required (KTC_E2E_REQUIRED=1) but is not usable")
        pytest.skip("Docker with Compose v2 is not available (run .ci/provision-docker.sh)")
    tmp = tmp_path_factory.mktemp("e2e")
    base = os.environ.get("KTC_BASE_IMAGE", "python:3.11-slim-bookworm")
    tensorflow = os.environ.get("KTC_TENSORFLOW", "tensorflow-cpu==2.21.0")
    tb_port = free_port()
    env = {
        "KTC_BASE_IMAGE": base, "KTC_TENSORFLOW": tensorflow, "KTC_IMAGE_TAG": image_tag(base, tensorflow),
        "KTC_DATASET": "digits", "KTC_MAX_TRIALS": str(MAX_TRIALS), "KTC_EPOCHS": "1", "KTC_SEED": "1",
        "KTC_TF_THREADS": "1", "KTC_STOP_GRACE_SECONDS": "20", "KTC_PROJECT": "e2e",
        "KTC_TENSORBOARD_PORT": str(tb_port), "KTC_RESULTS_HOST_DIR": str(tmp / "results"),
    }
    stack = Stack(f"ktce2e{os.getpid()}", env)
    try:
        stack.ensure_image()
        stack.compose("up", "-d", "--scale", "worker=2", timeout=300)
        codes = stack.wait_exited({"chief", "worker"}, timeout=600)
        yield {"stack": stack, "codes": codes, "results": tmp / "results" / "e2e", "tb": f"http://127.0.0.1:{tb_port}"}
    finally:
        print(stack.logs("chief")[-8000:])
        stack.close()


def test_chief_and_workers_exit_0(stack):
    names = sorted(stack["codes"])
    assert len(names) == 3 and any(n.endswith("chief-1") for n in names), names
    assert set(stack["codes"].values()) == {0}, stack["stack"].logs()[-4000:]


def test_results_on_the_host_with_distinct_worker_ids(stack):
    rows = list(csv.DictReader(open(stack["results"] / "trials.csv")))
    assert sorted(r["trial_id"] for r in rows) == [str(i) for i in range(MAX_TRIALS)]
    assert {r["status"] for r in rows} == {"COMPLETED"}
    assert {r["worker"] for r in rows} == {"worker-1", "worker-2"}
    best = json.load(open(stack["results"] / "best_hyperparameters.json"))
    assert best["trial_id"] in {r["trial_id"] for r in rows} and best["hyperparameters"]["model_type"] in ("mlp", "cnn")


def test_workers_derived_their_ids_and_devices(stack):
    logs = stack["stack"].logs("worker")
    for n in (1, 2):
        assert f"worker-{n} trains on CPU (no GPU visible)" in logs


def test_tensorboard_serves_every_trial_from_the_host(stack):
    base = stack["tb"]
    groups = wait_until(lambda: _complete(base), timeout=120, what="TensorBoard HParams with every trial")
    assert {g["name"] for g in groups} == {str(i) for i in range(MAX_TRIALS)}
    assert {g["hparams"]["worker"] for g in groups} == {"worker-1", "worker-2"}
    runs = http_json(base + "/data/runs")
    assert {f"{i}/execution0/validation" for i in range(MAX_TRIALS)} <= set(runs)


def test_tensorboard_keeps_serving(stack):
    running = [c for c in stack["stack"].containers() if c["Service"] == "tensorboard"]
    assert [c["State"] for c in running] == ["running"]


def _complete(base):
    try:
        groups = hparams_session_groups(base)
    except OSError:
        return None
    done = [g for g in groups if any(m["name"] == {"group": "validation", "tag": "epoch_accuracy"}
                                     for m in g.get("metricValues", []))]
    return done if len(done) >= MAX_TRIALS else None

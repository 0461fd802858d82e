"""The whole product in real containers: build, `up` with one worker, scale to two while the search
runs, check everything from the host (TensorBoard's HTTP API, the results folder), `down -v`."""

import csv
import json
import os

import pytest

from tests.e2e.compose import new_stack
from tests.procs import hparams_session_groups, http_json, wait_until

MAX_TRIALS = 8
OBJECTIVE_TAG = "trial/val_accuracy"  # shared.hparams.metric_tag: the oracle's record, as HParams shows it
USER = (4321, 4322)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    (tmp / "results").mkdir()
    if os.geteuid() == 0:  # a results folder of a user other than the containers' root
        os.chown(tmp / "results", *USER)
    stack = new_stack("ktce2e", tmp, KTC_DATASET="digits", KTC_MAX_TRIALS=MAX_TRIALS, KTC_EPOCHS=8, KTC_SEED=1,
                      KTC_TF_THREADS=1, KTC_STOP_GRACE_SECONDS=20, KTC_PROJECT="e2e")
    try:
        stack.ensure_image()
        stack.compose("up", "-d", "--scale", "worker=1", timeout=300)
        wait_until(lambda: "-> worker-1 (attempt 1)" in stack.logs("chief"), 240, what="worker-1's first trial")
        stack.compose("up", "-d", "--scale", "worker=2", "--no-recreate", timeout=300)  # join mid-search
        codes = stack.wait_exited({"chief", "worker"}, timeout=600)
        yield {"stack": stack, "codes": codes, "results": tmp / "results" / "e2e",
               "tb": f"http://127.0.0.1:{stack.env['KTC_TENSORBOARD_PORT']}"}
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


def test_the_scaled_worker_joined_while_the_search_ran(stack):
    logs = stack["stack"].logs("chief")
    assert logs.index("worker-2 registered") < logs.index("search finished")
    assert "-> worker-2 (attempt 1)" in logs


def test_status_command_in_the_finished_cluster(stack):
    out = stack["stack"].compose("run", "--rm", "--no-deps", "chief", "python", "-m", "chief", "status").stdout
    assert f"progress: {MAX_TRIALS}/{MAX_TRIALS} done (0 failed)" in out and "worker-2" in out


def test_best_model_file_on_the_host(stack):
    assert (stack["results"] / "best_model.keras").stat().st_size > 10_000


@pytest.mark.skipif(os.geteuid() != 0, reason="the results folder could not be given to another user")
def test_results_belong_to_the_owner_of_the_results_folder(stack):
    """The chief runs as root in its container; it gives what it wrote to the folder's owner."""
    paths = [stack["results"], *stack["results"].rglob("*")]
    assert len(paths) >= 4 and {(p.stat().st_uid, p.stat().st_gid) for p in paths} == {USER}, paths


def test_tensorboard_serves_every_trial_from_the_host(stack):
    base = stack["tb"]
    groups = wait_until(lambda: _complete(base), timeout=120, what="TensorBoard HParams with every trial")
    assert {g["name"] for g in groups} == {str(i) for i in range(MAX_TRIALS)}
    assert {g["hparams"]["worker"] for g in groups} == {"worker-1", "worker-2"}
    tags = http_json(base + "/data/plugin/scalars/tags")  # one run per trial attempt: its curves
    assert all({"epoch/loss", "epoch/val_accuracy"} <= set(tags.get(f"{i}/execution0", ())) for i in range(MAX_TRIALS)), tags


def test_tensorboard_keeps_serving(stack):
    running = [c for c in stack["stack"].containers() if c["Service"] == "tensorboard"]
    assert [c["State"] for c in running] == ["running"]


def test_up_on_the_finished_project_reports_it_and_exits_0(stack, tmp_path):
    """`docker compose up` again once the search is over (issue #15 item 4): the chief reports the
    finished search and exits 0, the workers exit 0 (not "dependency failed to start", workers left
    Created), TensorBoard serves the search; `up -d` exits 0. Runs last: it stops the stack."""
    s, project = stack["stack"], stack["stack"].project
    log = tmp_path / "up.log"
    up = s.attached(log)
    try:
        done = [f"{name} exited with code 0" for name in ("chief-1", "worker-1", "worker-2")]
        wait_until(lambda: all(d in log.read_text() for d in done) or up.poll() is not None, 240,
                   what="chief and workers to exit under an attached `up`")
        out = log.read_text()
        assert up.poll() is None, f"`up` ended ({up.returncode}) instead of staying with TensorBoard:\n{out[-3000:]}"
        assert all(d in out for d in done) and "dependency failed" not in out, out[-3000:]
        assert "project e2e is already finished: reporting it as it was run" in out
        assert f"search finished: {MAX_TRIALS} completed, 0 failed of {MAX_TRIALS}" in out
        assert len(wait_until(lambda: _complete(stack["tb"]), 120, what="TensorBoard")) == MAX_TRIALS
    finally:
        s.stop_attached(up)
    detached = s.compose("up", "-d", check=False, timeout=300)
    assert detached.returncode == 0, detached.stderr[-3000:]
    codes = s.wait_exited({"chief", "worker"}, timeout=240)
    assert set(codes.values()) == {0} and len(codes) == 3, codes
    assert [c["State"] for c in s.containers() if c["Service"] == "tensorboard"] == ["running"], project


def _complete(base):
    try:
        groups = hparams_session_groups(base)
    except OSError:
        return None
    done = [g for g in groups if any(m["name"]["tag"] == OBJECTIVE_TAG for m in g.get("metricValues", []))]
    return done if len(done) >= MAX_TRIALS else None

"""Real processes on loopback: scaling 1 -> 2 workers, versus Optuna, worker overhead, start-up."""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from tests.procs import ROOT, cluster_env, free_port

PY = sys.executable


def _env(tmp: str, **settings) -> dict:
    """The integration tests' process environment, with the benchmark's model and project."""
    defaults = dict(KTC_MODEL="benchmarks.models:fixed_cost", KTC_PROJECT="bench", KTC_SEED=1,
                    KTC_STOP_GRACE_SECONDS=5, TF_CPP_MIN_LOG_LEVEL=3, CUDA_VISIBLE_DEVICES=-1)
    return cluster_env(pathlib.Path(tmp), free_port(), **{**defaults, **settings})


def _run(procs: list[list[str]], envs: list[dict], timeout: float = 900) -> float:
    """Start all, wait for all; wall seconds. Every process is stopped by PID on the way out."""
    started = time.monotonic()
    children = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for cmd, env in zip(procs, envs)]
    try:
        for child in children:
            if child.wait(timeout=timeout) != 0:
                raise RuntimeError(f"{child.args} exited {child.returncode}")
        return time.monotonic() - started
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)


def _journal(tmp: str) -> list[dict]:
    with open(f"{tmp}/state/bench/ktcluster-runs.jsonl") as f:
        return [json.loads(line) for line in f]


def ktcluster(workers: int, trials: int, epochs: int) -> dict:
    """Wall time (chief start -> chief exit) and search time (first start -> last result)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(tmp, KTC_MAX_TRIALS=trials, KTC_EPOCHS=epochs)
        cmds = [[PY, "-m", "chief"]] + [[PY, "-m", "worker"]] * workers
        envs = [env] + [{**env, "KERASTUNER_TUNER_ID": f"worker-{n + 1}"} for n in range(workers)]
        wall = _run(cmds, envs)
        events = _journal(tmp)
    starts = [e["t"] for e in events if e["event"] == "start"]
    ends = [e["t"] for e in events if e["event"] == "end"]
    trial_seconds = [e["seconds"] for e in events if e["event"] == "end"]
    return {"wall": wall, "search": max(ends) - min(starts), "trial_seconds": statistics.median(trial_seconds)}


OPTUNA_WORKER = r'''
import os, sys
import optuna
from benchmarks.models import fixed_cost
from shared import data

class HP:  # adapts Optuna's trial to the KerasTuner calls the model makes
    def __init__(self, trial): self.trial = trial
    def Choice(self, name, values): return self.trial.suggest_categorical(name, values)
    def Float(self, name, low, high, sampling=None): return self.trial.suggest_float(name, low, high, log=sampling == "log")

def objective(trial):
    import tensorflow as tf
    ds = data.load("digits", "")
    model = fixed_cost(HP(trial))
    history = model.fit(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val),
                        epochs=int(os.environ["EPOCHS"]), verbose=0)
    return max(history.history["val_accuracy"])

import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(os.environ["JOURNAL"]))
study = optuna.load_study(study_name="bench", storage=storage)
study.optimize(objective, n_trials=int(os.environ["TRIALS"]))
'''


def optuna_run(workers: int, trials: int, epochs: int) -> dict | None:
    """The same model, data and budget with Optuna: `workers` processes on one journal file."""
    try:
        import optuna
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        journal = f"{tmp}/optuna.log"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
        optuna.create_study(study_name="bench", storage=storage, direction="maximize")
        per = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
        env = _env(tmp, JOURNAL=journal, EPOCHS=epochs)
        wall = _run([[PY, "-c", OPTUNA_WORKER]] * workers, [{**env, "TRIALS": str(n)} for n in per])
    return {"wall": wall}


OVERHEAD_WORKER = r'''
import json, os, sys, time
from shared import config, data, hypermodels
from worker import runner

settings = config.load(role="worker")
ds = data.load(settings.dataset, settings.data_dir)
build = hypermodels.resolve(settings.model, ds)
tuner = runner.ClusterTuner(settings, "worker-1", "CPU", build)
fit_seconds, rss, trial_seconds = [], [], []
real_fit = tuner.hypermodel.fit
def timed_fit(hp, model, *args, **kwargs):
    t = time.perf_counter()
    try:
        return real_fit(hp, model, *args, **kwargs)
    finally:
        fit_seconds.append(time.perf_counter() - t)
tuner.hypermodel.fit = timed_fit
real_begin, real_end = tuner.on_trial_begin, tuner.on_trial_end
def begin(trial):
    trial_seconds.append(-time.perf_counter()); real_begin(trial)
def end(trial):
    real_end(trial); trial_seconds[-1] += time.perf_counter()
    rss.append(int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]))
tuner.on_trial_begin, tuner.on_trial_end = begin, end
import keras
cycle = []
t0 = time.perf_counter()
tuner.oracle.register(claim_seconds=5)
import gc
gc.freeze()  # as worker.runner.run does
real_create = tuner.oracle.create_trial
def create(tuner_id):
    t = time.perf_counter(); trial = real_create(tuner_id); cycle.append(time.perf_counter() - t); return trial
tuner.oracle.create_trial = create
tuner.search(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val), epochs=settings.epochs,
             callbacks=[keras.callbacks.TensorBoard(settings.project_log_dir)], verbose=0)
tuner.oracle.close()
print(json.dumps({"fit": fit_seconds, "trial": trial_seconds, "rss_kib": rss, "ask": cycle}))
'''


def overhead(trials: int) -> dict:
    """Per-trial worker time outside fit (ask, build, report, log) and RSS after 1, 10, 50 trials."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(tmp, KTC_MAX_TRIALS=trials, KTC_EPOCHS=1)
        chief = subprocess.Popen([PY, "-m", "chief"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            out = subprocess.run([PY, "-c", OVERHEAD_WORKER], cwd=ROOT, env={**env, "KERASTUNER_TUNER_ID": "worker-1"},
                                 capture_output=True, text=True, timeout=900, check=True).stdout
            chief.wait(timeout=120)
        finally:
            if chief.poll() is None:
                chief.kill()
                chief.wait(timeout=30)
    figures = json.loads(out.strip().splitlines()[-1])
    outside = [t - f for t, f in zip(figures["trial"], figures["fit"])]
    rss = figures["rss_kib"]
    at = {n: rss[n - 1] / 1024 for n in (1, 10, 50) if len(rss) >= n}
    return {"fit_median": statistics.median(figures["fit"][1:] or figures["fit"]),
            "outside_median": statistics.median(outside[1:] or outside),
            "rss_mib": at, "trials": len(rss)}


def startup() -> dict:
    """Process start -> first trial running (chief and worker started together), from the journal."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(tmp, KTC_MAX_TRIALS=1, KTC_EPOCHS=1)
        t0 = time.time()
        _run([[PY, "-m", "chief"], [PY, "-m", "worker"]], [env, {**env, "KERASTUNER_TUNER_ID": "worker-1"}])
        first = min(e["t"] for e in _journal(tmp) if e["event"] == "start")
    return {"to_first_trial": first - t0}


def startup_docker(repeats: int) -> dict | None:
    """`docker compose up -d` (image already built) to the first trial running, digits, 1 worker."""
    from tests.e2e.compose import docker_available, new_stack
    from tests.procs import wait_until

    if not docker_available():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        stack = new_stack("ktcbench", pathlib.Path(tmp), KTC_DATASET="digits", KTC_MAX_TRIALS=2, KTC_EPOCHS=1,
                          KTC_PROJECT="start")
        try:
            stack.ensure_image()
            times = []
            for _ in range(repeats):
                started = time.monotonic()
                stack.compose("up", "-d", "--scale", "worker=1", timeout=300)
                wait_until(lambda: "-> worker-1 (attempt 1)" in stack.logs("chief"), 120, interval=0.2,
                           what="the first trial")
                times.append(time.monotonic() - started)
                stack.compose("down", "-v", "--timeout", "5", timeout=120)
        finally:
            stack.close()
    return {"to_first_trial": times}

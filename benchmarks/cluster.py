"""Real processes on loopback: 1 -> 2 worker scaling, versus Optuna, worker overhead, start-up.

Chief and workers are the real `python -m chief` / `python -m worker`, with the integration tests'
process environment (tests/procs.py `cluster_env`: digits, KTC_TF_THREADS=1, one state dir per
run) and a port the OS assigned (`free_port` binds port 0; the chief only accepts 1-65535).
Every process is started here, waited for with a bound, and killed by PID if it overruns.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.throughput import _cpu_seconds, even_split
from tests.procs import ROOT, cluster_env, free_port

PY = sys.executable


def _env(tmp: str, **settings) -> dict:
    """The integration tests' process environment, with the benchmark's model and project."""
    defaults = dict(KTC_MODEL="benchmarks.models:fixed_cost", KTC_PROJECT="bench", KTC_SEED=1,
                    KTC_STOP_GRACE_SECONDS=5, TF_CPP_MIN_LOG_LEVEL=3, CUDA_VISIBLE_DEVICES=-1)
    return cluster_env(pathlib.Path(tmp), free_port(), **{**defaults, **settings})


def _run(procs: list[list[str]], envs: list[dict], logs: str, timeout: float = 600,
         ends: list | None = None) -> tuple[float, list[str]]:
    """Start all, wait for all (each within `timeout`); wall seconds and each one's stdout.
    `ends`, if given, receives the seconds from the start to each process's exit (exact for the
    first process, which is waited for first; at most the others' exit times). Every process is
    killed by PID on the way out if it is still running."""
    started = time.monotonic()
    children, paths = [], []
    try:
        for n, (cmd, env) in enumerate(zip(procs, envs)):
            paths.append(os.path.join(logs, f"proc{n}.log"))
            with open(paths[-1], "w") as log:
                children.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = started + timeout
        for child, path in zip(children, paths):
            code = child.wait(timeout=max(deadline - time.monotonic(), 1))
            if ends is not None:
                ends.append(time.monotonic() - started)
            if code != 0:
                tail = pathlib.Path(path).read_text()[-2000:]
                raise RuntimeError(f"{' '.join(child.args[1:3])} exited {code}:\n{tail}")
        wall = time.monotonic() - started
        return wall, [pathlib.Path(p).read_text() for p in paths]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)


def _journal(tmp: str) -> list[dict]:
    with open(f"{tmp}/state/bench/ktcluster-runs.jsonl") as f:
        return [json.loads(line) for line in f]


def ktcluster(workers: int, trials: int, epochs: int) -> dict:
    """Wall (chief and workers started together -> all exited), to the chief's exit, the search
    (first trial start -> last result, from the chief's journal) and the start-up (processes
    started -> first trial started)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(tmp, KTC_MAX_TRIALS=trials, KTC_EPOCHS=epochs)
        cmds = [[PY, "-m", "chief"]] + [[PY, "-m", "worker"]] * workers
        envs = [env] + [{**env, "KERASTUNER_TUNER_ID": f"worker-{n + 1}"} for n in range(workers)]
        ends_at: list[float] = []
        t0 = time.time()
        wall, _ = _run(cmds, envs, tmp, ends=ends_at)
        events = _journal(tmp)
    starts = [e["t"] for e in events if e["event"] == "start"]
    finals = [e for e in events if e["event"] == "end"]
    if len(finals) != trials or any(e["status"] != "COMPLETED" for e in finals):
        raise RuntimeError(f"ktcluster run ended {len(finals)} of {trials} trials: {finals[-1:]}")
    return {"wall": wall, "chief_exit": ends_at[0], "search": max(e["t"] for e in finals) - min(starts),
            "to_first_trial": min(starts) - t0, "trial_seconds": statistics.median(e["seconds"] for e in finals)}


def plain(processes: int, trials: int, epochs: int) -> dict:
    """The same fits with no tuner: `processes` side by side, `trials` split between them."""
    per = even_split(trials, processes)
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(tmp)
        wall, outs = _run([[PY, "-m", "benchmarks.plain", str(n), str(epochs)] for n in per], [env] * processes, tmp)
    spans = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    return {"wall": wall, "search": max(s["last_end"] for s in spans) - min(s["first_start"] for s in spans)}


def optuna_run(workers: int, trials: int, epochs: int) -> dict | None:
    """The same model, data and budget with Optuna: `workers` processes on one JournalStorage file
    (the budget split evenly between them, as trials cost the same)."""
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        journal = f"{tmp}/optuna.log"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
        optuna.create_study(study_name="bench", storage=storage, direction="maximize")
        per = even_split(trials, workers)
        env = _env(tmp)
        t0 = time.time()
        wall, _ = _run([[PY, "-m", "benchmarks.optuna_worker", journal, str(n), str(epochs)] for n in per],
                       [env] * workers, tmp)
        done = optuna.load_study(study_name="bench", storage=storage).trials
    if len(done) != trials or any(t.state != optuna.trial.TrialState.COMPLETE for t in done):
        raise RuntimeError(f"Optuna run: {len(done)} of {trials} trials, states {[t.state.name for t in done]}")
    search = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    first = min(t.datetime_start for t in done).timestamp()  # naive local time, as Optuna records it
    return {"wall": wall, "search": search.total_seconds(), "to_first_trial": first - t0}


def ray_run(workers: int, trials: int, epochs: int) -> dict | None:
    """The same model, data and budget with Ray Tune (benchmarks.ray_run), if Ray is installed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        wall, outs = _run([[PY, "-m", "benchmarks.ray_run", str(workers), str(trials), str(epochs)]], [_env(tmp)], tmp)
    span = json.loads(outs[0].strip().splitlines()[-1])
    if span["trials"] != trials:
        raise RuntimeError(f"Ray Tune run: {span['trials']} of {trials} trials succeeded")
    return {"wall": wall, "search": span["last_end"] - span["first_start"]}


def _fit_log_figures(path: str) -> dict:
    """Per trial: fit seconds, time outside fit (this fit's start to the next one's, minus the fit),
    and RSS right after each fit."""
    with open(path) as f:
        fits = [json.loads(line) for line in f]
    fit = [r["end"] - r["start"] for r in fits]
    outside = [b["start"] - a["start"] - (a["end"] - a["start"]) for a, b in zip(fits, fits[1:])]
    rss = [r["rss_kib"] / 1024 for r in fits]
    return {"fit": fit, "outside": outside, "rss_mib": rss}


def overhead(trials: int) -> dict:
    """The real worker (python -m worker) against the real chief, 1-epoch digits trials, vs stock
    KerasTuner alone in one process on the same model, and vs the same fits with no tuner at all
    (benchmarks.plain: the floor): time outside fit per trial, RSS per trial."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        fit_log = f"{tmp}/fits.jsonl"
        env = _env(tmp, KTC_MAX_TRIALS=trials, KTC_EPOCHS=1, KTC_MODEL="benchmarks.models:fixed_cost_timed")
        worker_env = {**env, "KERASTUNER_TUNER_ID": "worker-1", "BENCH_FIT_LOG": fit_log}
        _run([[PY, "-m", "chief"], [PY, "-m", "worker"]], [env, worker_env], tmp)
        out["ktcluster"] = _fit_log_figures(fit_log)
    with tempfile.TemporaryDirectory() as tmp:
        fit_log = f"{tmp}/fits.jsonl"
        _run([[PY, "-m", "benchmarks.stock_rss", str(trials), fit_log]], [_env(tmp)], tmp)
        out["stock"] = _fit_log_figures(fit_log)
    with tempfile.TemporaryDirectory() as tmp:
        fit_log = f"{tmp}/fits.jsonl"
        _run([[PY, "-m", "benchmarks.plain", str(trials), "1", fit_log]], [_env(tmp)], tmp)
        out["no tuner"] = _fit_log_figures(fit_log)
    return out


def startup() -> dict:
    """Process start -> first trial running (chief and worker started together), from the journal."""
    with tempfile.TemporaryDirectory() as tmp:
        env = _env(tmp, KTC_MAX_TRIALS=1, KTC_EPOCHS=1)
        t0 = time.time()
        _run([[PY, "-m", "chief"], [PY, "-m", "worker"]], [env, {**env, "KERASTUNER_TUNER_ID": "worker-1"}], tmp)
        first = min(e["t"] for e in _journal(tmp) if e["event"] == "start")
    return {"to_first_trial": first - t0}


def _cpu_percent(pid: int, seconds: float) -> float:
    """Share of one core `pid` (all its threads) used over the next `seconds`."""
    c0, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def idle(window: float = 10.0) -> dict:
    """CPU between events: a chief serving with no worker yet, and a worker waiting for a chief
    that is not there yet (the order Compose or a slow image pull can produce); each alone,
    measured over `window` seconds once it has started up."""
    from tests.procs import processes, wait_until

    out = {}
    with tempfile.TemporaryDirectory() as tmp, processes() as start:
        env = _env(tmp, KTC_MAX_TRIALS=1, KTC_EPOCHS=1, KTC_CHIEF_TIMEOUT_SECONDS=600)
        chief = start("chief", [PY, "-m", "chief"], env, tmp)
        wait_until(lambda: "oracle serving" in chief.output(), 120, interval=0.2, what="the chief serving")
        time.sleep(1)
        out["chief_percent"] = _cpu_percent(chief.pid, window)
        chief.stop()
        env = _env(tmp, KTC_MAX_TRIALS=1, KTC_EPOCHS=1, KTC_CHIEF_TIMEOUT_SECONDS=600,
                   KERASTUNER_TUNER_ID="worker-1")  # a fresh port: nobody serves it
        worker = start("worker", [PY, "-m", "worker"], env, tmp)
        wait_until(lambda: "device CPU" in worker.output(), 120, interval=0.2, what="the worker started")
        time.sleep(1)
        out["worker_percent"] = _cpu_percent(worker.pid, window)
    return out

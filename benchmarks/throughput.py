"""Chief throughput: simulated workers (no training) over real gRPC against three servers.

Each simulated worker loops CreateTrial -> UpdateTrial -> EndTrial. Workers are threads spread
over several client processes (one channel each) so the clients are not the bottleneck; the
same harness drives every server, so their ratios are fair even on a small machine.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from tests.procs import ROOT, free_port


def _client(port: int, threads: int, proc_index: int, budget: int, deadline: float, out) -> None:
    """One client process: `threads` workers until STOPPED, `budget` trials or the deadline."""
    import grpc
    from keras_tuner.src import protos

    service = protos.get_service()
    running, completed = _status_codes()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = protos.get_service_grpc().OracleStub(channel)
    latencies, ends, lock = [], [], threading.Lock()

    def work(n: int) -> None:
        tuner_id = f"sim-{proc_index}-{n}"
        while time.monotonic() < deadline:
            with lock:
                if len(ends) >= budget:
                    return
            t0 = time.perf_counter()
            trial = stub.CreateTrial(service.CreateTrialRequest(tuner_id=tuner_id), timeout=60).trial
            t1 = time.perf_counter()
            if trial.status != running:  # STOPPED (or IDLE): this simulated worker is done
                return
            stub.UpdateTrial(service.UpdateTrialRequest(trial_id=trial.trial_id,
                                                        metrics={"val_accuracy": 0.5}, step=0), timeout=60)
            trial.status = completed
            stub.EndTrial(service.EndTrialRequest(trial=trial), timeout=60)
            with lock:
                latencies.append(t1 - t0)
                ends.append(time.monotonic())

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    channel.close()
    out.put((latencies, ends))


def _status_codes():
    from keras_tuner.src import protos

    status = protos.get_proto().TrialStatus
    return status.RUNNING, status.COMPLETED


def run_one(kind: str, workers: int, trials: int, processes: int | None = None, timeout: float = 300) -> dict:
    """Start a `kind` server, drive it with `workers` simulated workers, return the figures."""
    processes = processes or min(workers, 4)
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        server = subprocess.Popen([sys.executable, "-m", "benchmarks.servers", kind, str(port), str(trials), state],
                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
                                  start_new_session=True)
        try:
            ready = server.stdout.readline().strip()
            if ready != "READY":
                raise RuntimeError(f"{kind} server did not start")
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            deadline = time.monotonic() + timeout
            per = [workers // processes + (1 if i < workers % processes else 0) for i in range(processes)]
            budget = trials  # the null server never says STOPPED: the budget stops its clients
            started = time.monotonic()
            clients = [ctx.Process(target=_client, args=(port, n, i, budget // processes + 1, deadline, out))
                       for i, n in enumerate(per) if n]
            for c in clients:
                c.start()
            results = []
            while len(results) < len(clients):
                try:
                    results.append(out.get(timeout=1))
                except queue.Empty:
                    if time.monotonic() > deadline + 60 or not any(c.is_alive() for c in clients) and out.empty():
                        raise RuntimeError(f"{kind}: client processes died or overran") from None
            for c in clients:
                c.join(timeout=30)
            wall = time.monotonic() - started
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    latencies = sorted(x for lat, _ in results for x in lat)
    ends = sorted(x for _, e in results for x in e)
    done = len(ends)

    def rate(a, b):
        window = ends[a:b]
        return (len(window) - 1) / (window[-1] - window[0]) if len(window) > 1 and window[-1] > window[0] else None

    return {
        "server": kind, "workers": workers, "trials": done, "seconds": wall,
        "round_trips_per_s": rate(0, done) or 0.0,  # steady state: first to last result
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99) - 1] if latencies else None,
        "rate_100_600": rate(100, 600), "rate_last_500": rate(max(done - 500, 0), done),
    }


def median_of(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if isinstance(runs[0][k], (int, float)) and k not in ("workers",)]
    merged = dict(runs[0])
    for k in keys:
        values = [r[k] for r in runs if r[k] is not None]
        merged[k] = statistics.median(values) if values else None
    merged["spread"] = {k: (min(r[k] for r in runs), max(r[k] for r in runs))
                        for k in ("round_trips_per_s", "p99_ms") if all(r[k] is not None for r in runs)}
    merged["repeats"] = len(runs)
    return merged


def bayesian_ms_per_trial(checkpoints=(100, 500)) -> dict:
    """The chief's own cost per trial with the Bayesian oracle (in process, no gRPC), around each checkpoint."""
    import warnings

    from benchmarks.servers import space_oracle
    from chief.coordinator import Coordinator

    warnings.filterwarnings("ignore", module="sklearn")  # the GP's convergence warnings, once per trial
    out = {}
    with tempfile.TemporaryDirectory() as state:
        oracle = space_oracle(max(checkpoints) + 10, state, kind="bayesian")
        c = Coordinator(oracle, lease_seconds=600, heartbeat_seconds=10)
        c.register("w", "i")
        times = []
        import random

        rng = random.Random(0)
        for n in range(max(checkpoints)):
            t0 = time.perf_counter()
            trial, _ = c.create_trial("w", "i")
            c.update_trial(trial.trial_id, {"val_accuracy": rng.random()}, worker="w")
            trial.status = "COMPLETED"
            c.end_trial(trial, "w", "i")
            times.append(time.perf_counter() - t0)
        c.close()
    for k in checkpoints:
        window = times[max(k - 10, 0):k]
        out[k] = 1000 * statistics.median(window)
    return out

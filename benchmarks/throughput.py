"""Chief throughput: simulated workers (no training) over real gRPC against three servers.

Each simulated worker is a thread with its own gRPC channel (own connection, as a real worker has)
looping CreateTrial -> UpdateTrial(val_accuracy) -> EndTrial(COMPLETED) until the server says
STOPPED (stock, ktcluster) or the run's budget is spent (null). The threads are spread over up to
4 client processes (`spawn`), which load only the generated protos (no TensorFlow), so the clients
are not the bottleneck and the same harness drives every server.

Measured per run: steady-state round trips per second (first to last EndTrial), CreateTrial
latency p50/p99 (scheduling latency as a worker sees it), and the server's CPU milliseconds per
trial (from /proc/<pid>/stat, sampled every 50 ms): the chief's own cost, which does not depend on
how the 2 cores are shared with the clients.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import queue
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENT_PROCESSES = 4
TICK = os.sysconf("SC_CLK_TCK")


def _client(port: int, threads: int, proc_index: int, budget: int, deadline: float, ready, go, out) -> None:
    """One client process: `threads` simulated workers, until STOPPED, `budget` trials or the deadline."""
    import grpc

    from benchmarks.servers import light_protos

    protos = light_protos()
    service, status = protos.get_service(), protos.get_proto().TrialStatus
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(threads)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    stubs = [protos.get_service_grpc().OracleStub(c) for c in channels]
    latencies, ends, lock = [], [], threading.Lock()

    def work(n: int) -> None:
        stub, tuner_id = stubs[n], f"sim-{proc_index}-{n}"
        while time.monotonic() < deadline:
            with lock:
                if len(ends) >= budget:
                    return
            t0 = time.perf_counter()
            trial = stub.CreateTrial(service.CreateTrialRequest(tuner_id=tuner_id), timeout=60).trial
            t1 = time.perf_counter()
            if trial.status != status.RUNNING:  # STOPPED: the search is over for this worker
                return
            stub.UpdateTrial(service.UpdateTrialRequest(trial_id=trial.trial_id,
                                                        metrics={"val_accuracy": 0.5}, step=0), timeout=60)
            trial.status = status.COMPLETED
            stub.EndTrial(service.EndTrialRequest(trial=trial), timeout=60)
            with lock:
                latencies.append(t1 - t0)
                ends.append(time.monotonic())  # CLOCK_MONOTONIC: one clock for every process

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    ready.release()
    go.wait(60)
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for channel in channels:
        channel.close()
    out.put((latencies, ends))


def even_split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` shares differing by at most one."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class CpuSampler(threading.Thread):
    """(monotonic time, CPU seconds) of one process every `interval`; `at(t)` interpolates."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval, self.samples, self._stop_event = pid, interval, [], threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append((time.monotonic(), _cpu_seconds(self.pid)))
            except (FileNotFoundError, ProcessLookupError):
                return
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def at(self, t: float) -> float:
        s = self.samples
        for (t0, c0), (t1, c1) in zip(s, s[1:]):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1
        return s[-1][1] if t > s[-1][0] else s[0][1]


def _readline(stream, timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().strip() if ready else ""


def run_one(kind: str, workers: int, trials: int, canned: str, timeout: float = 300,
            windows: dict[str, tuple[int, int]] | None = None, root: str = ROOT) -> dict:
    """Start a `kind` server, drive it with `workers` simulated workers for `trials` trials.

    `root`: the checkout whose server code runs (another commit's, to compare two versions of the
    chief in one invocation); the clients always run this one's.

    `windows` names trial ranges [a, b) (by order of completion) to report rate and server CPU
    per trial over; "all" (every trial) is always reported.
    """
    processes = min(workers, CLIENT_PROCESSES)
    with tempfile.TemporaryDirectory() as state:
        server = subprocess.Popen([sys.executable, "-m", "benchmarks.servers", kind, str(trials), state, canned],
                                  cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                  env={**os.environ, "PYTHONPATH": root, "TF_CPP_MIN_LOG_LEVEL": "3"})
        clients = []
        try:
            line = _readline(server.stdout, 120)
            if not line.startswith("READY "):
                raise RuntimeError(f"{kind} server did not start (got {line!r})")
            port = int(line.split()[1])
            ctx = mp.get_context("spawn")
            out, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
            deadline = time.monotonic() + timeout
            per = even_split(workers, processes)
            budget = math.ceil(trials / processes)  # stops the null server's clients; the others say STOPPED
            clients = [ctx.Process(target=_client, args=(port, n, i, budget, deadline, ready, go, out))
                       for i, n in enumerate(per)]
            for c in clients:
                c.start()
            for _ in clients:
                if not ready.acquire(timeout=60):
                    raise RuntimeError(f"{kind}: client processes did not connect")
            sampler = CpuSampler(server.pid)
            sampler.start()
            go.set()
            results = []
            while len(results) < len(clients):
                try:
                    results.append(out.get(timeout=1))
                except queue.Empty:
                    if time.monotonic() > deadline + 60 or (not any(c.is_alive() for c in clients) and out.empty()):
                        raise RuntimeError(f"{kind}: client processes died or overran") from None
            sampler.stop()
        finally:
            for c in clients:
                if c.pid is None:  # never started
                    continue
                c.join(timeout=30)
                if c.is_alive():
                    c.kill()
                    c.join(timeout=10)
            server.kill()
            server.wait(timeout=30)
            server.stdout.close()
    latencies = sorted(x for lat, _ in results for x in lat)
    ends = sorted(x for _, e in results for x in e)
    done = len(ends)

    def window(a: int, b: int) -> dict:
        a, b = max(a, 0), min(b, done)
        if b - a < 2 or ends[b - 1] <= ends[a]:
            return {"rate": None, "cpu_ms": None}
        n = b - 1 - a
        return {"rate": n / (ends[b - 1] - ends[a]),
                "cpu_ms": 1000 * (sampler.at(ends[b - 1]) - sampler.at(ends[a])) / n}

    def pct(q: float) -> float | None:
        return 1000 * latencies[max(math.ceil(q * len(latencies)) - 1, 0)] if latencies else None

    spans = {"all": window(0, done)}
    spans.update({name: window(a, b) for name, (a, b) in (windows or {}).items()})
    return {"server": kind, "workers": workers, "trials": done, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "windows": spans}


def spread(values) -> dict:
    """Median (min, max) of values: of one figure over repeated runs, or of ratios run by run."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def median_of(runs: list[dict]) -> dict:
    """Median of each figure over repeated runs, with (min, max) of each."""
    def values(get):
        return [v for v in (get(r) for r in runs) if v is not None]

    def summary(get):
        v = values(get)
        return spread(v) if v else None

    merged = {"server": runs[0]["server"], "workers": runs[0]["workers"], "repeats": len(runs),
              "trials": summary(lambda r: r["trials"]), "p50_ms": summary(lambda r: r["p50_ms"]),
              "p99_ms": summary(lambda r: r["p99_ms"]), "windows": {}}
    for name in runs[0]["windows"]:
        merged["windows"][name] = {k: summary(lambda r, k=k, name=name: r["windows"][name][k])
                                   for k in ("rate", "cpu_ms")}
    return merged


def bayesian_ms_per_trial(checkpoints=(100, 500), window: int = 10) -> dict:
    """The chief's own cost per trial with the Bayesian oracle (in process, no gRPC) at each checkpoint.

    KerasTuner refits its Gaussian process on every completed trial before each new one, so the
    cost of trial N depends on N, not on how the earlier N trials were chosen. To reach trial 500
    without paying for 490 Gaussian-process fits first, the oracle is built with
    num_initial_points = N - window: trials before that are random (cheap), the last `window`
    trials are proposed by the Gaussian process fitted on N - window .. N - 1 trials; the median of
    those is reported. Both ktcluster's coordinator and the bare stock oracle are measured.
    """
    import random
    import warnings

    from benchmarks.servers import space_oracle
    from chief.coordinator import Coordinator
    from chief.trials import Caller

    warnings.filterwarnings("ignore")  # the GP's convergence warnings, once per trial
    out = {"ktcluster": {}, "stock": {}}
    for n in checkpoints:
        for kind in ("ktcluster", "stock"):
            with tempfile.TemporaryDirectory() as state:
                oracle = space_oracle(n + 1, state, kind="bayesian", cluster=kind == "ktcluster",
                                      num_initial_points=n - window)
                if kind == "ktcluster":
                    c, caller = Coordinator(oracle, lease_seconds=600, heartbeat_seconds=10), Caller("w", "i")
                    c.register("w", "i")
                    create = lambda: c.create_trial("w", caller)[0]  # noqa: E731
                    update = lambda t, m: c.update_trial(t, m, 0, caller)  # noqa: E731
                    end = lambda t: c.end_trial(t, caller)  # noqa: E731
                else:
                    c = None
                    create, update, end = (lambda: oracle.create_trial("w")), oracle.update_trial, oracle.end_trial
                rng, times = random.Random(0), []
                for _ in range(n):
                    t0 = time.perf_counter()
                    trial = create()
                    update(trial.trial_id, {"val_accuracy": rng.random()})
                    trial.status = "COMPLETED"
                    end(trial)
                    times.append(time.perf_counter() - t0)
                if c is not None:
                    c.close()
            out[kind][n] = {"gp_ms": 1000 * statistics.median(times[n - window:]),
                            "random_ms": 1000 * statistics.median(times[max(n - window - 50, 0):n - window])}
    return out


class InProcessContext:
    """The part of a gRPC context the servicer uses, for calls made in process (the
    simulated workers): a ktcluster worker's metadata, or none, as a stock worker sends."""

    def __init__(self, worker: str | None = None):
        from shared import rpc

        self._metadata = ((rpc.WORKER_KEY, worker), (rpc.INSTANCE_KEY, f"{worker}-pid")) if worker else ()

    def peer(self):
        return "in-process"

    def auth_context(self):
        return {}

    def invocation_metadata(self):
        return self._metadata

    def set_trailing_metadata(self, metadata):
        pass

    def abort(self, code, details):
        raise RuntimeError(f"{code}: {details}")


def chief_ms_per_trial(trials: int = 3000, repeats: int = 3, flush_mib: int = 16) -> dict:
    """The chief's own CPU per trial (servicer + coordinator, in process, no gRPC) with warm caches
    and with `flush_mib` MiB streamed through the caches before every call, as happens when the
    server shares its cores with other processes: how much of its cost under load is cache misses.

    The same create -> update -> end loop as the simulated workers, on the benchmark's oracle and
    the chief's logging (to /dev/null); thread CPU time of the calls only. Medians of `repeats`
    rounds, each a warm and a cold run of `trials` trials, interleaved.
    """
    import gc
    import logging

    from benchmarks.servers import space_oracle
    from chief import progress
    from shared.logs import configure_logging
    from chief.coordinator import Coordinator
    from chief.server import OracleServicer
    from keras_tuner.src import protos

    service, completed = protos.get_service(), protos.get_proto().TrialStatus.COMPLETED
    context, scratch = InProcessContext(), bytearray(flush_mib << 20)  # as the simulated workers: no metadata
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with tempfile.TemporaryDirectory() as state, open(os.devnull, "w") as devnull:
        root.handlers = []
        configure_logging("chief", devnull)
        oracle = space_oracle(2 * repeats * trials + 1000, state, cluster=True)
        coordinator = Coordinator(oracle, lease_seconds=600, heartbeat_seconds=10, on_event=progress.ProgressLog(),
                                  stock_lease_seconds=600)
        servicer = OracleServicer(coordinator)
        gc.freeze()  # as chief.server.serve
        gc.set_threshold(10_000, 20, 20)

        def loop(n: int, cold: bool) -> float:
            def call(method, request):
                if cold:
                    bytes(scratch)
                t0 = time.thread_time()
                reply = method(request, context)
                return reply, time.thread_time() - t0

            spent = 0.0
            for i in range(n):
                reply, create = call(servicer.CreateTrial, service.CreateTrialRequest(tuner_id=f"sim-{i % 8}"))
                trial = reply.trial
                _, update = call(servicer.UpdateTrial, service.UpdateTrialRequest(
                    trial_id=trial.trial_id, metrics={"val_accuracy": 0.5}, step=0))
                trial.status = completed
                _, end = call(servicer.EndTrial, service.EndTrialRequest(trial=trial))
                spent += create + update + end
            return 1000 * spent / n

        try:
            loop(200, cold=False)  # warm-up
            rounds = [(loop(trials, cold=False), loop(trials, cold=True)) for _ in range(repeats)]
        finally:
            coordinator.close()
            gc.unfreeze()
            gc.set_threshold(700, 10, 10)
            root.handlers, root.level = handlers, level
    warm, cold = (statistics.median(r[k] for r in rounds) for k in (0, 1))
    return {"trials": trials, "flush_mib": flush_mib, "warm_ms": warm, "cold_ms": cold, "rounds": rounds}

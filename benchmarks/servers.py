"""`python -m benchmarks.servers KIND MAX_TRIALS STATE_DIR [CANNED_TRIAL_FILE]`: one server for the
throughput benchmark, on a port the OS picks (it binds port 0 and prints `READY <port>` once serving).

KIND:
- stock: KerasTuner's own chief, `keras_tuner.src.distribute.oracle_chief.start_server(oracle)`,
  unchanged (its one-thread gRPC pool, its oracle with the stock `save`);
- ktcluster: what `python -m chief` serves (chief.server.bind + chief.coordinator.Coordinator +
  chief.server.serve), without the dataset and model start-up;
- null: the same Oracle service doing no work (a canned RUNNING trial, empty replies): the ceiling
  for Python gRPC on this machine. It imports neither KerasTuner nor TensorFlow. Two handler
  threads, as the chief: the fastest pool for a do-nothing server here too (gRPC's usual 8 serve
  15-25% fewer trials per second, so a ceiling measured with 8 would be too low).
- null-aio: the same on grpc.aio (one event-loop thread instead of a thread pool), to check that
  an asyncio server would not raise that ceiling.
BENCH_SERVER_THREADS=N gives the null and ktcluster servers N handler threads instead of 2 (the
chief's default), to compare pool sizes.
Same oracle type (RandomSearch) and search space for stock and ktcluster.
"""

from __future__ import annotations

import os
import sys


def light_protos():
    """KerasTuner's generated protos (`keras_tuner.src.protos`) without running keras_tuner's
    package __init__, which imports Keras and TensorFlow: simulated workers and the null server
    then cost what a gRPC client/server costs, not a TensorFlow runtime per process."""
    import importlib.util
    import types

    if "keras_tuner" not in sys.modules:
        root = os.path.dirname(importlib.util.find_spec("keras_tuner").origin)
        for name, path in (("keras_tuner", root), ("keras_tuner.src", os.path.join(root, "src"))):
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    from keras_tuner.src import protos

    return protos


def space_oracle(max_trials: int, state_dir: str, kind: str = "random", cluster: bool = False, **kwargs):
    """The benchmark's oracle: RandomSearch (or Bayesian) on a simple space, max val_accuracy;
    `cluster`: extended as the chief extends it (chief.oracle)."""
    import keras_tuner as kt

    cls = kt.oracles.BayesianOptimizationOracle if kind == "bayesian" else kt.oracles.RandomSearchOracle
    if cluster:
        from chief.oracle import cluster_class

        cls = cluster_class(cls)
    oracle = cls(objective=kt.Objective("val_accuracy", "max"), max_trials=max_trials, seed=1, **kwargs)
    oracle._set_project_dir(state_dir, "bench")
    oracle.verbose = 0
    hp = oracle.get_space()
    hp.Int("x", 0, 10**9)
    hp.Float("y", 0.0, 1.0)
    oracle.update_space(hp)
    return oracle


def canned_trial(path: str) -> None:
    """Write a real RUNNING trial of the benchmark's space (as the stock oracle makes it), serialized,
    for the null server to answer with: same message sizes as the real servers."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        oracle = space_oracle(10, tmp)
        trial = oracle.create_trial("sim-0")
    with open(path, "wb") as f:
        f.write(trial.to_proto().SerializeToString())


def _null_replies(canned_path: str):
    """The null servers' gRPC module and a reply maker per method: a real RUNNING trial (read
    from `canned_path`) or an empty result, built afresh on every call as a real server would."""
    protos = light_protos()
    service = protos.get_service()
    canned = protos.get_proto().Trial()
    with open(canned_path, "rb") as f:
        canned.ParseFromString(f.read())
    return protos.get_service_grpc(), {
        "CreateTrial": lambda: service.CreateTrialResponse(trial=canned),
        "UpdateTrial": lambda: service.UpdateTrialResponse(trial=canned),
        "EndTrial": service.EndTrialResponse,
    }


def _threads() -> int:
    """Handler threads of the null and ktcluster servers: BENCH_SERVER_THREADS, else the chief's 2."""
    return int(os.environ.get("BENCH_SERVER_THREADS") or 2)


def serve_null(canned_path: str) -> None:
    from concurrent import futures

    import grpc

    service_grpc, replies = _null_replies(canned_path)

    class Null(service_grpc.OracleServicer):
        pass

    for name, make in replies.items():
        setattr(Null, name, lambda self, request, context, make=make: make())

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=_threads()))
    service_grpc.add_OracleServicer_to_server(Null(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"READY {port}", flush=True)
    server.wait_for_termination()


def serve_null_aio(canned_path: str) -> None:
    import asyncio

    import grpc

    service_grpc, replies = _null_replies(canned_path)

    class Null(service_grpc.OracleServicer):
        pass

    for name, make in replies.items():
        async def answer(self, request, context, make=make):
            return make()

        setattr(Null, name, answer)

    async def main():
        server = grpc.aio.server()
        service_grpc.add_OracleServicer_to_server(Null(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"READY {port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def serve_stock(max_trials: int, state_dir: str) -> None:
    """Stock `start_server`, which binds KERASTUNER_ORACLE_PORT and never says which port it got:
    with port 0 the OS picks one, and a wrapper around `grpc.server` reports it once serving."""
    import grpc
    from keras_tuner.src.distribute import oracle_chief

    oracle = space_oracle(max_trials, state_dir)
    real_server = grpc.server

    def reporting_server(*args, **kwargs):
        server = real_server(*args, **kwargs)
        bound, real_add, real_start = [], server.add_insecure_port, server.start

        def add_insecure_port(address):
            bound.append(real_add(address))
            return bound[-1]

        def start():
            real_start()
            print(f"READY {bound[-1]}", flush=True)

        server.add_insecure_port, server.start = add_insecure_port, start
        return server

    oracle_chief.grpc.server = reporting_server
    os.environ.update(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT="0", KERASTUNER_TUNER_ID="chief")
    oracle_chief.start_server(oracle)


def serve_ktcluster(max_trials: int, state_dir: str) -> None:
    """As chief/__main__.py's `run`, minus dataset, model and results: the same coordinator,
    server and progress logging (per-trial lines and progress, to stderr, which the harness
    discards)."""
    from chief import progress
    from shared.logs import configure_logging
    from chief.coordinator import Coordinator
    from chief.server import bind, serve

    configure_logging("chief", sys.stderr)
    server, port = bind("127.0.0.1:0", max_workers=_threads())
    oracle = space_oracle(max_trials, state_dir, cluster=True)
    # The simulated workers speak stock KerasTuner's protocol (no identity): served as stock clients.
    coordinator = Coordinator(oracle, lease_seconds=600, heartbeat_seconds=10, on_event=progress.ProgressLog(),
                              stock_lease_seconds=600)
    coordinator.save_state()
    serve(server, coordinator)
    print(f"READY {port}", flush=True)
    server.wait_for_termination()


def main(kind: str, max_trials: int, state_dir: str, canned_path: str = "") -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    if kind == "null":
        serve_null(canned_path)
    elif kind == "null-aio":
        serve_null_aio(canned_path)
    elif kind == "stock":
        serve_stock(max_trials, state_dir)
    elif kind == "ktcluster":
        serve_ktcluster(max_trials, state_dir)
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:])

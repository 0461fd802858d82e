"""`python -m benchmarks.servers KIND PORT MAX_TRIALS STATE_DIR`: one chief for the throughput benchmark.

KIND: stock (KerasTuner's own `oracle_chief.start_server`), ktcluster (the chief's coordinator and
server, without dataset/model start-up), null (same protocol, no work: the ceiling for Python gRPC
here). Same oracle type and search space for the first two. Prints READY when serving.
"""

from __future__ import annotations

import os
import sys
import threading


def space_oracle(max_trials: int, state_dir: str, kind: str = "random"):
    import keras_tuner as kt

    cls = kt.oracles.BayesianOptimizationOracle if kind == "bayesian" else kt.oracles.RandomSearchOracle
    oracle = cls(objective=kt.Objective("val_accuracy", "max"), max_trials=max_trials, seed=1)
    oracle._set_project_dir(state_dir, "bench")
    oracle.verbose = 0
    hp = oracle.get_space()
    hp.Int("units", 1, 10**6)
    hp.Float("lr", 1e-4, 1e-1, sampling="log")
    hp.Choice("kind", ["a", "b", "c"])
    oracle.update_space(hp)
    return oracle


def serve_null(port: int) -> None:
    import grpc
    from concurrent import futures

    from keras_tuner.src import protos
    from keras_tuner.src.engine import trial as trial_module

    service, service_grpc = protos.get_service(), protos.get_service_grpc()
    oracle = space_oracle(10, os.environ.get("TMPDIR", "/tmp"))
    canned = trial_module.Trial(oracle.get_space(), trial_id="0", status="RUNNING").to_proto()

    class Null(service_grpc.OracleServicer):
        def CreateTrial(self, request, context):
            return service.CreateTrialResponse(trial=canned)

        def UpdateTrial(self, request, context):
            return service.UpdateTrialResponse(trial=canned)

        def EndTrial(self, request, context):
            return service.EndTrialResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    service_grpc.add_OracleServicer_to_server(Null(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


def main(kind: str, port: int, max_trials: int, state_dir: str) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    if kind == "null":
        return serve_null(port)
    oracle = space_oracle(max_trials, state_dir)
    if kind == "stock":
        from keras_tuner.src.distribute import oracle_chief

        os.environ.update(KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port),
                          KERASTUNER_TUNER_ID="chief")
        threading.Timer(0.5, lambda: print("READY", flush=True)).start()
        return oracle_chief.start_server(oracle)
    from chief.coordinator import Coordinator
    from chief.server import bind, serve

    server, _ = bind(f"127.0.0.1:{port}")
    coordinator = Coordinator(oracle, lease_seconds=600, heartbeat_seconds=10)
    coordinator.save_state()
    serve(server, coordinator)
    print("READY", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])

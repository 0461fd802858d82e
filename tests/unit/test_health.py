"""`python -m chief health` (Compose's healthcheck, every 3 s, also while the chief starts) answers
from a real gRPC server's port without importing TensorFlow: each probe used to import it, taking
CPU seconds from the chief's and the workers' own start-up."""

import subprocess
import sys
from concurrent import futures

import grpc

from tests.conftest import ROOT
from tests.procs import cluster_env, free_port

PROBE = ("import sys; from chief.__main__ import main; rc = main(['health']); "
         "print('heavy', sorted(m for m in ('tensorflow', 'keras', 'keras_tuner') if m in sys.modules)); sys.exit(rc)")


def _probe(tmp_path, port):
    env = cluster_env(tmp_path, port)
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_health_is_light_and_tells_serving_from_absent(tmp_path):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        serving = _probe(tmp_path, port)
    finally:
        server.stop(grace=None)
    assert serving.returncode == 0, serving.stderr[-2000:]
    assert serving.stdout.strip().splitlines()[-1] == "heavy []"
    absent = _probe(tmp_path, free_port())
    assert absent.returncode == 1 and absent.stdout.strip().splitlines()[-1] == "heavy []"

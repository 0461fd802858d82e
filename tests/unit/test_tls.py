"""Mutual TLS on the oracle over real gRPC on loopback: the chief started with KTC_TLS_DIR serves
only clients presenting a certificate of its own CA; everything else is refused before any
request reaches the coordinator. Plus the files `python -m shared.tls make` writes and the
one-line errors for a folder that cannot be used."""

import gc
import os
import shutil
import stat
from concurrent import futures

import grpc
import keras_tuner as kt
import pytest
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_client as stock_client

from chief.coordinator import Coordinator
from chief.oracle import cluster_oracle
from chief.server import bind, serve
from shared.tls import wait_ready
from shared import tls
from shared.config import ConfigError
from worker.client import OracleClient

service = protos.get_service()
FILES = ["ca.pem", "chief.key", "chief.pem", "worker.key", "worker.pem"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two independent sets: `ours` (the chief's) and `theirs` (another CA)."""
    root = tmp_path_factory.mktemp("tls")
    for name in ("ours", "theirs"):
        tls.make(str(root / name))
    return str(root / "ours"), str(root / "theirs")


@pytest.fixture
def chief(tmp_path, sets):
    """(coordinator, address) of a chief serving mutual TLS with `ours` on a port the OS picked,
    set up as `python -m chief` does."""
    threshold = gc.get_threshold()
    oracle = cluster_oracle(kt.oracles.RandomSearchOracle, objective=kt.Objective("score", "max"), max_trials=3,
                            seed=1)
    oracle.use_project(str(tmp_path), "proj")
    oracle.verbose = 0
    coordinator = Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1)
    hp = oracle.get_space()
    hp.Int("x", 0, 100)
    oracle.update_space(hp)
    server, port = bind("127.0.0.1:0", tls_dir=sets[0])
    serve(server, coordinator)
    try:
        yield coordinator, f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(10)
        coordinator.close()
        gc.unfreeze()  # serve() froze this test process's heap
        gc.set_threshold(*threshold)


def _read(folder, name):
    with open(os.path.join(folder, name), "rb") as f:
        return f.read()


def _get_space(channel):
    with channel:
        return protos.get_service_grpc().OracleStub(channel).GetSpace(service.GetSpaceRequest(), timeout=5)


def _refused(channel):
    with pytest.raises(grpc.RpcError) as caught:
        _get_space(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value


# -- the files ---------------------------------------------------------------------------------
def test_make_writes_a_usable_set_with_private_keys(sets):
    ours, _ = sets
    assert sorted(os.listdir(ours)) == FILES
    for name in FILES:
        mode = stat.S_IMODE(os.stat(os.path.join(ours, name)).st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name
    for role in ("chief", "worker"):
        material = tls.load(ours, role)
        assert material.cert == _read(ours, f"{role}.pem") and material.key == _read(ours, f"{role}.key")
    assert tls.main(["check", ours]) == 0


def test_make_never_overwrites(sets, capsys):
    ours, _ = sets
    before = _read(ours, "ca.pem")
    assert tls.main(["make", ours]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert _read(ours, "ca.pem") == before


@pytest.mark.parametrize("breakage, message", [
    (lambda d, other: shutil.rmtree(d), "no such folder"),
    (lambda d, other: os.remove(os.path.join(d, "chief.key")), "chief.key is missing"),
    (lambda d, other: open(os.path.join(d, "chief.pem"), "w").write("hello"), "chief.pem is not a PEM certificate"),
    (lambda d, other: shutil.copy(os.path.join(d, "worker.key"), os.path.join(d, "chief.key")),
     "chief.key is not the key of chief.pem"),
    (lambda d, other: [shutil.copy(os.path.join(other, n), d) for n in ("chief.pem", "chief.key")],
     "chief.pem is not signed by ca.pem"),
    (lambda d, other: [shutil.copy(os.path.join(d, "worker" + ext), os.path.join(d, "chief" + ext))
                       for ext in (".pem", ".key")], "chief.pem does not name ktcluster-chief"),
])
def test_an_unusable_folder_is_one_line_naming_the_setting_and_file(tmp_path, sets, breakage, message):
    folder = str(tmp_path / "tls")
    shutil.copytree(sets[0], folder)
    breakage(folder, sets[1])
    with pytest.raises(ConfigError) as caught:
        tls.server_credentials(folder)
    text = str(caught.value)
    assert text.startswith(f"KTC_TLS_DIR={folder!r} is not valid: {message}") and "\n" not in text
    with pytest.raises(ConfigError):
        bind("127.0.0.1:0", tls_dir=folder)  # the chief fails before serving anything


# -- over gRPC ---------------------------------------------------------------------------------
def test_a_worker_of_this_ca_is_served_whatever_host_it_dials(chief, sets):
    _, address = chief
    assert _get_space(tls.channel(address, sets[0])).hyperparameters.space
    port = address.rsplit(":", 1)[1]
    assert _get_space(tls.channel(f"localhost:{port}", sets[0])).hyperparameters.space  # another name


def test_the_worker_client_creates_a_trial_over_tls(chief, sets, tmp_path):
    coordinator, address = chief
    local = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"))
    client = OracleClient(local, address, "worker-1", 10, str(tmp_path), tls_dir=sets[0])
    try:
        client.register(claim_seconds=5)
        trial = client.create_trial("worker-1")
    finally:
        client.close()
    assert trial.status == "RUNNING" and client.attempt_of(trial.trial_id) == 1
    assert coordinator.get_trial(trial.trial_id).status == "RUNNING"
    assert local.trials == {}  # the local oracle was never asked


def test_a_client_without_a_certificate_is_refused(chief, sets):
    _, address = chief
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(sets[0], "ca.pem"))
    _refused(grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", tls.CHIEF_NAME)]))


def test_a_client_certificate_of_another_ca_is_refused(chief, sets):
    ours, theirs = sets
    _, address = chief
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(ours, "ca.pem"),
                                               private_key=_read(theirs, "worker.key"),
                                               certificate_chain=_read(theirs, "worker.pem"))
    _refused(grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", tls.CHIEF_NAME)]))


def test_a_plaintext_client_is_refused(chief):
    _, address = chief
    _refused(grpc.insecure_channel(address))
    assert not wait_ready(address, timeout=1)  # a plaintext health check sees no chief either


def test_a_stock_keras_tuner_client_is_refused(chief, monkeypatch):
    coordinator, address = chief
    host, port = address.rsplit(":", 1)
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", host)
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", port)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "stock-1")
    monkeypatch.setattr(stock_client, "TIMEOUT", 2)  # its hour-long wait, shortened
    client = stock_client.OracleClient(kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max")))
    with pytest.raises(grpc.RpcError) as caught:
        client.create_trial("stock-1")
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # it never got through
    assert coordinator.oracle.trials == {}  # nothing reached the oracle


def test_workers_refuse_a_chief_presenting_another_certificate(sets):
    """A stolen worker key cannot pose as the chief: its certificate does not name ktcluster-chief."""
    ours, _ = sets
    server = grpc.server(futures.ThreadPoolExecutor(1))
    credentials = grpc.ssl_server_credentials([(_read(ours, "worker.key"), _read(ours, "worker.pem"))],
                                              root_certificates=_read(ours, "ca.pem"), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        _refused(tls.channel(f"127.0.0.1:{port}", ours))
    finally:
        server.stop(grace=None).wait(10)


def test_the_chief_health_check_speaks_tls(chief, sets, monkeypatch):
    from chief.__main__ import main

    _, address = chief
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "0.0.0.0")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", address.rsplit(":", 1)[1])
    monkeypatch.setenv("KTC_TLS_DIR", sets[0])
    assert main(["health"]) == 0
    monkeypatch.setenv("KTC_TLS_DIR", "")
    assert main(["health"]) == 1
    monkeypatch.setenv("KTC_TLS_DIR", os.path.join(sets[0], "nowhere"))
    assert main(["health"]) == 2

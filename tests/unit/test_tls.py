"""Mutual TLS on the oracle over real gRPC on loopback: the chief started with KTC_TLS_DIR serves
only clients presenting a certificate of its own CA; everything else is refused before any
request reaches the coordinator. Plus the files `python -m shared.tls make` writes and the
one-line errors for a folder that cannot be used."""

import contextlib
import gc
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from concurrent import futures

import grpc
import keras_tuner as kt
import pytest
from keras_tuner.src.distribute import oracle_client as stock_client

from chief.coordinator import Coordinator
from chief.oracle import cluster_oracle
from chief.server import bind, serve
from shared.tls import wait_ready
from shared import rpc, tls
from shared.config import ConfigError
from tests.conftest import ROOT
from tests.procs import cluster_env
from worker.client import ChiefUnreachable, OracleClient, TLSMismatch

service = rpc.ORACLE_MESSAGES
FILES = ["ca.pem", "chief.key", "chief.pem", "probe.key", "probe.pem", "worker.key", "worker.pem"]


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
        return rpc.ORACLE_GRPC.OracleStub(channel).GetSpace(service.GetSpaceRequest(), timeout=5)


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
    for role in ("chief", "worker", "probe"):
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


# -- a worker whose TLS set-up does not match the chief's ----------------------------------------
@contextlib.contextmanager
def _plaintext_chief(tmp_path):
    oracle = cluster_oracle(kt.oracles.RandomSearchOracle, objective=kt.Objective("score", "max"), max_trials=3)
    oracle.use_project(str(tmp_path), "plain")
    coordinator = Coordinator(oracle, lease_seconds=10, heartbeat_seconds=1)
    server, port = bind("127.0.0.1:0")
    serve(server, coordinator)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None).wait(10)
        coordinator.close()
        gc.unfreeze()


def _register(address, tls_dir, tmp_path, timeout):
    local = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "max"))
    client = OracleClient(local, address, "worker-1", timeout, str(tmp_path), tls_dir=tls_dir)
    try:
        client.register(claim_seconds=5)
    finally:
        client.close()


def test_a_worker_with_another_cas_set_stops_at_once_naming_the_setting(chief, sets, tmp_path):
    coordinator, address = chief
    started = time.monotonic()
    with pytest.raises(TLSMismatch, match=r"CERTIFICATE_VERIFY_FAILED.*KTC_TLS_DIR.*one set"):
        _register(address, sets[1], tmp_path, timeout=60)
    assert time.monotonic() - started < 10  # not KTC_CHIEF_TIMEOUT_SECONDS: waiting cannot fix it
    assert not coordinator.leases.holds("worker-1", None)  # it never got through


def test_a_tls_worker_against_a_plaintext_chief_stops_at_once(sets, tmp_path):
    with _plaintext_chief(tmp_path) as address:
        started = time.monotonic()
        with pytest.raises(TLSMismatch, match=r"WRONG_VERSION_NUMBER.*KTC_TLS_DIR"):
            _register(address, sets[0], tmp_path, timeout=60)
        assert time.monotonic() - started < 10


def test_a_plaintext_worker_against_a_tls_chief_stops_at_once_naming_ktc_tls_dir(chief, tmp_path):
    """Whatever gRPC's details say ("Socket closed" here; "Connection reset by peer" on a
    Compose network), one probe of the port tells a TLS chief from an outage."""
    _, address = chief
    started = time.monotonic()
    with pytest.raises(TLSMismatch, match=r"serves TLS and this worker does not \(set KTC_TLS_DIR here too\)"):
        _register(address, "", tmp_path, timeout=60)
    assert time.monotonic() - started < 10


def test_the_probe_tells_tls_from_plaintext_from_nothing(chief, tmp_path):
    _, address = chief
    assert tls.speaks_tls(address) is True
    with _plaintext_chief(tmp_path) as plain:
        assert tls.speaks_tls(plain) is False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    assert tls.speaks_tls(closed) is None and tls.speaks_tls("no-such-host.invalid:8000") is None
    with socket.socket() as silent:  # accepts, never answers: within the timeout, nothing is known
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        assert tls.speaks_tls(f"127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) is None
        assert time.monotonic() - started < 3


def test_a_protocol_mismatch_names_the_side_and_the_setting():
    assert tls.protocol_mismatch("chief:8000", "", serves_tls=False) is None
    assert tls.protocol_mismatch("chief:8000", "/ktc/tls", serves_tls=True) is None
    assert "serves TLS and this worker does not (set KTC_TLS_DIR here too)" in tls.protocol_mismatch(
        "chief:8000", "", serves_tls=True)
    assert "serves plaintext and this worker uses TLS (set KTC_TLS_DIR at the chief too)" in tls.protocol_mismatch(
        "chief:8000", "/ktc/tls", serves_tls=False)


def test_a_plaintext_worker_still_waits_out_a_chief_that_is_down(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ChiefUnreachable, match="KTC_CHIEF_TIMEOUT_SECONDS"):
        _register(closed, "", tmp_path, timeout=2)


def test_tls_material_is_ignored_by_git_and_docker():
    for path in ("tls/chief.key", "tls/ca.pem"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not ignored by git (.gitignore)"
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        patterns = {line.strip().rstrip("/") for line in f if line.strip() and not line.startswith("#")}
    assert "tls" in patterns, "tls/ is not in .dockerignore"


def test_each_side_says_whether_tls_is_on():
    assert tls.describe("", "chief").startswith("TLS off (KTC_TLS_DIR is empty)")
    assert tls.describe("/ktc/tls", "worker").startswith("TLS on (KTC_TLS_DIR=/ktc/tls)")


def test_tls_setup_errors_are_told_from_outages():
    verify = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake failed "
              "(TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
              "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK")
    assert tls.setup_error(verify) == "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"
    alert = "last error: UNKNOWN: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: TLSV1_ALERT_UNKNOWN_CA"
    assert tls.setup_error(alert) == "TLSV1_ALERT_UNKNOWN_CA"
    for outage in ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed",
                   "last error: UNKNOWN: Tls handshake failed (TSI_PROTOCOL_FAILURE): Socket closed",
                   "failed to connect to all addresses; last error: UNAVAILABLE: Connection refused", "", None):
        assert tls.setup_error(outage) is None


def test_the_worker_process_exits_2_with_one_line_naming_ktc_tls_dir(chief, sets, tmp_path):
    _, address = chief
    host, port = address.rsplit(":", 1)
    env = cluster_env(tmp_path, int(port), KTC_TLS_DIR=sets[1], KERASTUNER_TUNER_ID="worker-1",
                      KTC_DATASET="tests.fixtures.models:tiny_data", KTC_MODEL="tests.fixtures.models:build_model")
    done = subprocess.run([sys.executable, "-m", "worker"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("ktcluster worker:")]
    assert len(lines) == 1 and lines[0].startswith(f"ktcluster worker: KTC_TLS_DIR={sets[1]}: worker-1: "), lines


# -- certificates by role (issue 21) -----------------------------------------------------------
def _usages(folder, name):
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(_read(folder, name))
    return sorted(u._name for u in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_each_certificate_carries_its_roles_usage_only(sets):
    ours, _ = sets
    assert _usages(ours, "chief.pem") == ["serverAuth"]
    assert _usages(ours, "worker.pem") == ["clientAuth"]
    assert _usages(ours, "probe.pem") == ["clientAuth"]


@pytest.mark.parametrize("role, usages", [("chief", ["serverAuth", "clientAuth"]), ("worker", ["clientAuth", "serverAuth"]),
                                          ("probe", ["serverAuth"])])
def test_check_refuses_a_certificate_with_another_roles_usage_in_one_line(tmp_path, monkeypatch, capsys, role, usages):
    monkeypatch.setitem(tls.LEAF_USAGES, role, usages)
    folder = str(tmp_path / "old")
    tls.make(folder)
    assert tls.main(["check", folder]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{role}.pem is for " in err and f"a {role} certificate must be for" in err
    with pytest.raises(ConfigError):
        tls.load(folder, role)


def test_a_worker_certificate_cannot_serve_nor_a_probes_stand_in_for_a_workers(tmp_path, sets):
    ours, _ = sets
    folder = str(tmp_path / "swapped")
    shutil.copytree(ours, folder)
    for ext in (".pem", ".key"):
        shutil.copy(os.path.join(ours, "probe" + ext), os.path.join(folder, "worker" + ext))
    with pytest.raises(ConfigError, match="worker.pem is not a worker certificate"):
        tls.load(folder, "worker")


def _channel_as(address, folder, cert, key):
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(folder, "ca.pem"),
                                               private_key=_read(folder, key), certificate_chain=_read(folder, cert))
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", tls.CHIEF_NAME)])


def test_the_probe_passes_the_health_check_and_may_call_nothing(chief, sets):
    coordinator, address = chief
    ours, _ = sets
    assert wait_ready(address, timeout=5, tls_dir=ours)  # the health check presents probe.pem
    calls = {
        "GetSpace": lambda stub, cluster: stub.GetSpace(service.GetSpaceRequest(), timeout=5),
        "CreateTrial": lambda stub, cluster: stub.CreateTrial(service.CreateTrialRequest(tuner_id="w1"), timeout=5,
                                                              metadata=((rpc.WORKER_KEY, "w1"), (rpc.INSTANCE_KEY, "i"))),
        "Register": lambda stub, cluster: cluster.Register({"worker": "w1", "instance": "i"}, timeout=5),
    }
    codes = {}
    with _channel_as(address, ours, "probe.pem", "probe.key") as channel:
        stub, cluster = rpc.ORACLE_GRPC.OracleStub(channel), rpc.ClusterStub(channel)
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                call(stub, cluster)
            codes[name] = caught.value.code()
    assert codes == dict.fromkeys(calls, grpc.StatusCode.PERMISSION_DENIED), codes
    assert not coordinator.leases.holds("w1", None) and not coordinator.oracle.trials


def test_the_chiefs_certificate_cannot_act_as_a_worker(chief, sets):
    coordinator, address = chief
    ours, _ = sets
    with _channel_as(address, ours, "chief.pem", "chief.key") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            rpc.ClusterStub(channel).Register({"worker": "w1", "instance": "i"}, timeout=5)
    # refused at the handshake (no clientAuth) or, were it accepted there, by its name
    assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED), caught.value
    assert not coordinator.leases.holds("w1", None)

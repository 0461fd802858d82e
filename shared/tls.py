"""Mutual TLS on the oracle: the files, their checks, and the gRPC credentials built from them.

KTC_TLS_DIR names a folder of PEM files (empty: plaintext, as before):

    ca.pem      the cluster's own certificate authority (it signs the three below, nothing else)
    chief.pem   the chief's certificate (name `ktcluster-chief`, serverAuth only), chief.key its key
    worker.pem  the workers' certificate (`ktcluster-worker`, clientAuth only), worker.key its key
    probe.pem   the health probe's certificate (`ktcluster-probe`, clientAuth only), probe.key

Certificates by role: the chief's certificate cannot act as a client, the workers' cannot serve,
and the probe's may connect (the health check) but may call nothing: the chief refuses every
call from a certificate that is not a worker's (chief/server.py). A folder whose certificates
carry other usages (a set from before roles, where chief.pem also had clientAuth) is refused
with one line. The chief needs ca.pem, chief.pem, chief.key, and probe.pem/probe.key where its
health check runs; a worker needs ca.pem, worker.pem and worker.key. With the folder set, the
chief serves TLS only and refuses any client whose certificate is not signed by ca.pem (no
certificate, another CA's, a plaintext channel, a stock KerasTuner client).

Names: the chief's certificate names `ktcluster-chief` only, and clients check that name
(`grpc.ssl_target_name_override`) whatever host they dial (`chief` in Compose, `tasks.chief` on
Swarm, a Service's DNS name or an IP on Kubernetes). The CA is private to one cluster and signs
only these certificates, so "signed by this CA and named ktcluster-chief" identifies the chief
without a certificate per deployment name; the chain and the name are still verified.

`python -m shared.tls make DIR` writes a new set (ECDSA P-256 keys, mode 0600; CA valid 10
years, leaves 2), never overwriting; `python -m shared.tls check DIR` validates a folder.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from dataclasses import dataclass

from shared.config import ConfigError

SETTING = "KTC_TLS_DIR"
CHIEF_NAME = "ktcluster-chief"  # the one name in the chief's certificate; clients check it
WORKER_NAME = "ktcluster-worker"
PROBE_NAME = "ktcluster-probe"
CA, CHIEF_CERT, CHIEF_KEY, WORKER_CERT, WORKER_KEY = "ca.pem", "chief.pem", "chief.key", "worker.pem", "worker.key"
PROBE_CERT, PROBE_KEY = "probe.pem", "probe.key"
ROLE_FILES = {"chief": (CHIEF_CERT, CHIEF_KEY), "worker": (WORKER_CERT, WORKER_KEY), "probe": (PROBE_CERT, PROBE_KEY)}
ROLE_NAMES = {"chief": CHIEF_NAME, "worker": WORKER_NAME, "probe": PROBE_NAME}
#: role -> its certificate's only extended key usage ("serverAuth" or "clientAuth")
ROLE_USAGE = {"chief": "serverAuth", "worker": "clientAuth", "probe": "clientAuth"}
CA_DAYS, LEAF_DAYS = 3650, 730
LEAF_USAGES = {role: [usage] for role, usage in ROLE_USAGE.items()}  # what `make` writes (tests change it)


class TLSError(ConfigError):
    """A TLS folder that cannot be used; the message is one line naming the setting (KTC_TLS_DIR
    unless told), the folder and what is wrong with which file."""

    def __init__(self, value: str, problem: str, name: str = SETTING):
        super().__init__(name, value, problem)


@dataclass(frozen=True)
class Material:
    """One role's PEM bytes, checked: `cert` is signed by `ca`, valid now, and matches `key`."""

    ca: bytes
    cert: bytes
    key: bytes


def load(tls_dir: str, role: str) -> Material:
    """Read and check `role`'s files ("chief", "worker" or "probe") in `tls_dir`: signed by ca.pem,
    valid now, the key matching, naming the role and carrying its usage only; raise TLSError."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    cert_name, key_name = ROLE_FILES[role]

    def fail(what: str) -> TLSError:
        return TLSError(tls_dir, f"{what} (make a set with: python -m shared.tls make DIR)")

    if not os.path.isdir(tls_dir):
        raise fail("no such folder")
    raw = {}
    for name in (CA, cert_name, key_name):
        try:
            with open(os.path.join(tls_dir, name), "rb") as f:
                raw[name] = f.read()
        except FileNotFoundError:
            raise fail(f"{name} is missing") from None
        except OSError as exc:
            raise fail(f"{name} cannot be read ({exc.strerror})") from None
    certs = {}
    for name in (CA, cert_name):
        try:
            certs[name] = x509.load_pem_x509_certificate(raw[name])
        except ValueError:
            raise fail(f"{name} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(raw[key_name], password=None)
    except (ValueError, TypeError):
        raise fail(f"{key_name} is not an unencrypted PEM private key") from None
    now = datetime.datetime.now(datetime.timezone.utc)
    for name, cert in certs.items():
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise fail(f"{name} is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                       f"{cert.not_valid_after_utc:%Y-%m-%d})")
    try:
        certs[cert_name].verify_directly_issued_by(certs[CA])
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise fail(f"{cert_name} is not signed by {CA} ({type(exc).__name__})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.PEM, public)
            != certs[cert_name].public_key().public_bytes(serialization.Encoding.PEM, public)):
        raise fail(f"{key_name} is not the key of {cert_name}")
    if role == "chief" and CHIEF_NAME not in _dns_names(certs[cert_name]):
        raise fail(f"{cert_name} does not name {CHIEF_NAME} (its subject alternative names)")
    common = [a.value for a in certs[cert_name].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if common != [ROLE_NAMES[role]]:
        raise fail(f"{cert_name} is not a {role} certificate (its common name is {', '.join(common) or 'missing'}, "
                   f"not {ROLE_NAMES[role]})")
    usages = _usages(certs[cert_name])
    if usages != [ROLE_USAGE[role]]:
        raise fail(f"{cert_name} is for {', '.join(usages) or 'no extended key usage'}; a {role} certificate must "
                   f"be for {ROLE_USAGE[role]} only (a set from before certificates by role?)")
    return Material(ca=raw[CA], cert=raw[cert_name], key=raw[key_name])


def _usages(cert) -> list[str]:
    """The certificate's extended key usages by short name (serverAuth, clientAuth...), sorted."""
    from cryptography import x509

    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return []
    return sorted(getattr(oid, "_name", None) or oid.dotted_string for oid in usages)


def _dns_names(cert) -> list[str]:
    from cryptography import x509

    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        return []


def server_credentials(tls_dir: str):
    """The chief's gRPC server credentials requiring a client certificate signed by ca.pem;
    None when `tls_dir` is "" (plaintext). Raises TLSError."""
    if not tls_dir:
        return None
    import grpc

    material = load(tls_dir, "chief")
    return grpc.ssl_server_credentials([(material.key, material.cert)], root_certificates=material.ca,
                                       require_client_auth=True)


def channel(address: str, tls_dir: str, role: str = "worker", options=()):
    """A gRPC channel to the chief at `address`: plaintext when `tls_dir` is "", else TLS that
    presents `role`'s certificate and accepts only a server certificate signed by ca.pem and
    named CHIEF_NAME, whatever host `address` names. Raises TLSError."""
    import grpc

    if not tls_dir:
        return grpc.insecure_channel(address, options=list(options))
    material = load(tls_dir, role)
    credentials = grpc.ssl_channel_credentials(root_certificates=material.ca, private_key=material.key,
                                               certificate_chain=material.cert)
    return grpc.secure_channel(address, credentials,
                               options=[*options, ("grpc.ssl_target_name_override", CHIEF_NAME)])


# What gRPC's details say when a handshake failed on certificates or on TLS against plaintext
# (never on a connection cut mid-handshake, which a caller retries as an outage).
_SETUP_ERROR = re.compile(r"handshake failed.*?\b(CERTIFICATE_VERIFY_FAILED|WRONG_VERSION_NUMBER|\w*ALERT\w*)"
                          r"(?::\s*([^:]+))?", re.IGNORECASE | re.DOTALL)


def setup_error(details: str | None) -> str | None:
    """The reason (`CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate`) if a gRPC
    call's `details` say its TLS handshake failed on certificates or protocol (another CA, TLS on
    one side only), else None."""
    match = _SETUP_ERROR.search(details or "")
    if not match:
        return None
    return f"{match.group(1)}: {match.group(2).strip()}" if match.group(2) else match.group(1)


def speaks_tls(address: str, timeout: float = 2.0) -> bool | None:
    """Probe `address` ("host:port", "[v6]:port") once: True if what listens there answers a TLS
    ClientHello with a TLS record (a ServerHello or an alert: it serves TLS), False if it answers
    otherwise or closes the connection (a plaintext gRPC server), None if nothing could be reached
    (refused, unresolved, no answer within `timeout`). Verifies nothing and sends no certificate:
    it only tells a worker which protocol the chief speaks, to explain a refusal (`mismatch`)."""
    import socket
    import ssl

    host, _, port = address.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    outgoing = ssl.MemoryBIO()
    hello = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=CHIEF_NAME)
    try:
        hello.do_handshake()
    except ssl.SSLWantReadError:  # the ClientHello is written; the reply is read from the socket
        pass
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as sock:
            sock.sendall(outgoing.read())
            head = sock.recv(5)
    except (ConnectionResetError, BrokenPipeError):
        return False  # reached, and it hung up on a TLS ClientHello
    except (OSError, ValueError):
        return None
    # A TLS record: content type handshake (22) or alert (21), then major version 3. Never the
    # start of an HTTP/2 frame (a 24-bit length of over 1.4 MB, past any frame a server sends).
    return len(head) >= 2 and head[0] in (21, 22) and head[1] == 3


def protocol_mismatch(address: str, tls_dir: str, serves_tls: bool) -> str | None:
    """What is wrong when the chief at `address` speaks TLS (`serves_tls`, from `speaks_tls`) and
    this worker's `tls_dir` says otherwise (TLS on one side only); None when both agree."""
    if serves_tls == bool(tls_dir):
        return None
    if serves_tls:
        return f"the chief at {address} serves TLS and this worker does not (set {SETTING} here too)"
    return f"the chief at {address} serves plaintext and this worker uses TLS (set {SETTING} at the chief too)"


def describe(tls_dir: str, role: str) -> str:
    """The line the chief and each worker log once at start: is TLS on, and from which folder."""
    if not tls_dir:
        return f"TLS off ({SETTING} is empty): the oracle {'serves' if role == 'chief' else 'is dialled in'} plaintext"
    return f"TLS on ({SETTING}={tls_dir}): mutual TLS with this folder's ca.pem and {role}.pem"


def wait_ready(address: str, timeout: float, tls_dir: str = "") -> bool:
    """True once something accepts gRPC connections at `address` within `timeout` seconds (the
    chief's health check, tests); with `tls_dir`, over mutual TLS presenting the health probe's
    certificate (probe.pem: it may connect, never call; TLSError if unusable). Imports gRPC only."""
    import grpc

    with channel(address, tls_dir, role="probe") as ready:
        try:
            grpc.channel_ready_future(ready).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False


def make(folder: str, days: int = LEAF_DAYS) -> list[str]:
    """Write a new CA, chief, worker and probe set into `folder` (created if needed; keys mode
    0600), each leaf with its role's usage only (ROLE_USAGE).
    Refuses (TLSError) if any of the files exists: a new CA would orphan the old certificates.
    Returns the paths written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = (CA, CHIEF_CERT, CHIEF_KEY, WORKER_CERT, WORKER_KEY, PROBE_CERT, PROBE_KEY)
    existing = [n for n in names if os.path.exists(os.path.join(folder, n))]
    if existing:
        raise TLSError(folder, f"{', '.join(existing)} already there; refusing to overwrite (remove them or "
                               "choose another folder)", name="DIR")
    os.makedirs(folder, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)  # tolerate clocks slightly behind

    def cert(subject, key, issuer, issuer_key, days, extensions):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=days)))
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ktcluster CA")])
    ca_cert = cert(ca_name, ca_key, ca_name, ca_key, CA_DAYS, [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                       data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                       encipher_only=False, decipher_only=False), True),
        (x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)])

    def leaf(name, usages):
        key = ec.generate_private_key(ec.SECP256R1())
        return key, cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key, ca_name, ca_key, days, [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                           data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                           encipher_only=False, decipher_only=False), True),
            (x509.ExtendedKeyUsage(usages), False),
            (x509.SubjectAlternativeName([x509.DNSName(name)]), False),
            (x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)])

    oids = {"serverAuth": ExtendedKeyUsageOID.SERVER_AUTH, "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH}
    chief_key, chief_cert = leaf(CHIEF_NAME, [oids[u] for u in LEAF_USAGES["chief"]])
    worker_key, worker_cert = leaf(WORKER_NAME, [oids[u] for u in LEAF_USAGES["worker"]])
    probe_key, probe_cert = leaf(PROBE_NAME, [oids[u] for u in LEAF_USAGES["probe"]])

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    contents = {CA: ca_cert.public_bytes(serialization.Encoding.PEM),
                CHIEF_CERT: chief_cert.public_bytes(serialization.Encoding.PEM), CHIEF_KEY: pem_key(chief_key),
                WORKER_CERT: worker_cert.public_bytes(serialization.Encoding.PEM), WORKER_KEY: pem_key(worker_key),
                PROBE_CERT: probe_cert.public_bytes(serialization.Encoding.PEM), PROBE_KEY: pem_key(probe_key)}
    written = []
    for name in names:  # the CA's key is never written: a new worker set means a new `make`
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if name.endswith(".key") else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(contents[name])
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.tls", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make_cmd = commands.add_parser("make", help="write ca.pem, chief.pem/.key, worker.pem/.key and probe.pem/.key "
                                                "into DIR")
    make_cmd.add_argument("dir")
    make_cmd.add_argument("--days", type=int, default=LEAF_DAYS, help=f"leaf validity (default {LEAF_DAYS})")
    check_cmd = commands.add_parser("check", help="check DIR as KTC_TLS_DIR for the chief, the workers and the "
                                                  "health probe")
    check_cmd.add_argument("dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "make":
            if not 1 <= args.days <= CA_DAYS:
                raise TLSError(str(args.days), f"must be 1 to {CA_DAYS}", name="--days")
            for path in make(args.dir, args.days):
                print(path)
        else:
            for role in ROLE_FILES:
                load(args.dir, role)
            print(f"{args.dir}: usable by the chief, the workers and the health probe")
    except TLSError as exc:
        print(f"ktcluster tls: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

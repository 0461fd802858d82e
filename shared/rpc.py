"""What ktcluster adds on the wire, beside KerasTuner's Oracle service.

A second gRPC service, `ktcluster.Cluster`, on the chief's port: JSON
messages through grpcio's generic handlers (no generated code to keep in
sync). And gRPC metadata on the stock Oracle calls, so the chief knows which
worker instance sent them and can receive a failed trial's message (the
stock Trial proto has no message field).

KerasTuner's Oracle service definitions have no public import path: `keras_tuner.src.protos`
is imported here only, for chief and worker alike.
"""

from __future__ import annotations

import json

import grpc
from keras_tuner.src import protos

ORACLE_MESSAGES = protos.get_service()  # KerasTuner's Oracle requests and responses
ORACLE_GRPC = protos.get_service_grpc()  # its servicer base class and stub

SERVICE = "ktcluster.Cluster"
METHODS = ("Register", "Heartbeat")

WORKER_KEY = "ktc-worker"  # tuner id
INSTANCE_KEY = "ktc-instance"  # one per worker process: tells a restarted worker from a duplicate
MESSAGE_KEY = "ktc-message-bin"  # a failed trial's message, UTF-8 (binary metadata)
USED_KEY = "ktc-used"  # EndTrial: JSON list of the hyperparameters the model was built with
ATTEMPT_KEY = "ktc-attempt"  # trailing metadata of CreateTrial: attempt number of the trial


def _dumps(obj) -> bytes:
    return json.dumps(obj).encode()


NOT_JSON = "<not a JSON payload>"  # what a handler receives for bytes that are not JSON (or are `null`)


def _loads(raw: bytes):
    """The request as JSON; NOT_JSON if it is not JSON, which the handler refuses with
    INVALID_ARGUMENT (a deserializer returning None makes grpc answer INTERNAL itself)."""
    try:
        value = json.loads(raw.decode()) if raw else {}
    except ValueError:
        return NOT_JSON
    return NOT_JSON if value is None else value


def generic_handler(implementation) -> grpc.GenericRpcHandler:
    """Serve `implementation.<Method>(request: dict, context) -> dict` for every name in METHODS."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(implementation, name), request_deserializer=_loads, response_serializer=_dumps)
        for name in METHODS
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class ClusterStub:
    """Client side: `stub.Heartbeat({...}, timeout=...) -> dict`."""

    def __init__(self, channel: grpc.Channel):
        for name in METHODS:
            setattr(self, name, channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=_dumps, response_deserializer=_loads))


def metadata(context) -> dict:
    """Invocation metadata as a dict (binary values stay bytes)."""
    return {key: value for key, value in (context.invocation_metadata() or ())}

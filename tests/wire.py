"""A scripted client of the chief over real gRPC, for black-box tests of its wire contract.

`Client.call` returns a `Reply` (status code, details, response, trailing metadata) instead of
raising, so a test asserts the status code the chief answered. `ScriptedWorker` speaks the
contract a ktcluster worker speaks (Register, then `ktc-worker`/`ktc-instance` metadata on every
Oracle call, `ktc-attempt` on UpdateTrial/EndTrial) without TensorFlow training: it reports
made-up metrics, so a search finishes in a few RPCs per trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
import uuid

import grpc
from keras_tuner.src import protos

from shared import rpc

service = protos.get_service()
proto = protos.get_proto()
STATUS = proto.TrialStatus


@contextlib.contextmanager
def serving(coordinator, on_call=None):
    """Serve `coordinator` in this process on a port the OS picked (chief.server's bind and serve,
    `on_call` as the chief passes it); yield (Oracle stub, Cluster stub, channel). On exit the server
    stops, the coordinator closes, and the garbage collector is as before (serve() froze the heap)."""
    from chief.server import bind, serve

    threshold = gc.get_threshold()
    server, port = bind("127.0.0.1:0")
    serve(server, coordinator, on_call=on_call)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield protos.get_service_grpc().OracleStub(channel), rpc.ClusterStub(channel), channel
    finally:
        channel.close()
        server.stop(grace=None).wait(10)
        coordinator.close()
        gc.unfreeze()
        gc.set_threshold(*threshold)


@dataclasses.dataclass
class Reply:
    code: grpc.StatusCode
    details: str
    response: object
    trailing: dict

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


class Client:
    """One channel to the chief at 127.0.0.1:`port`; every call bounded by `timeout` seconds."""

    def __init__(self, port: int, timeout: float = 10):
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.oracle = protos.get_service_grpc().OracleStub(self.channel)
        self.cluster = rpc.ClusterStub(self.channel)
        self.timeout = timeout

    def call(self, method: str, request, metadata=()) -> Reply:
        stub = self.cluster if method in rpc.METHODS else self.oracle
        try:
            response, call = getattr(stub, method).with_call(request, timeout=self.timeout,
                                                             metadata=tuple(metadata))
            return Reply(grpc.StatusCode.OK, "", response, dict(call.trailing_metadata() or ()))
        except grpc.RpcError as exc:
            return Reply(exc.code(), exc.details() or "", None, {})

    def close(self) -> None:
        self.channel.close()


def ready(port: int, timeout: float) -> bool:
    """True once the chief at `port` accepts gRPC connections."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False


def metrics(value: float) -> dict:
    """What the tiny fixture model reports per epoch (objective: val_accuracy)."""
    return {"accuracy": value, "loss": 1 - value, "val_accuracy": value, "val_loss": 1 - value}


class ScriptedWorker:
    """A registered worker id with its own instance; `attempts` holds what CreateTrial said."""

    def __init__(self, client: Client, worker: str):
        self.client, self.worker, self.instance = client, worker, uuid.uuid4().hex
        self.attempts: dict[str, int] = {}

    def metadata(self, trial_id: str | None = None, attempt: int | None = None) -> tuple:
        meta = ((rpc.WORKER_KEY, self.worker), (rpc.INSTANCE_KEY, self.instance))
        if trial_id is not None or attempt is not None:
            meta += ((rpc.ATTEMPT_KEY, str(attempt if attempt is not None else self.attempts.get(trial_id, 1))),)
        return meta

    def register(self) -> Reply:
        return self.client.call("Register", {"worker": self.worker, "instance": self.instance, "info": "scripted"},
                                self.metadata())

    def create(self) -> Reply:
        reply = self.client.call("CreateTrial", service.CreateTrialRequest(tuner_id=self.worker), self.metadata())
        if reply.ok and reply.response.trial.status == STATUS.RUNNING:
            self.attempts[reply.response.trial.trial_id] = int(reply.trailing.get(rpc.ATTEMPT_KEY, 1) or 1)
        return reply

    def update(self, trial_id: str, value: float, step: int = 0, attempt: int | None = None) -> Reply:
        request = service.UpdateTrialRequest(trial_id=trial_id, metrics=metrics(value), step=step)
        return self.client.call("UpdateTrial", request, self.metadata(trial_id, attempt))

    def end(self, trial, status=STATUS.COMPLETED, attempt: int | None = None) -> Reply:
        ended = proto.Trial()
        ended.CopyFrom(trial)
        ended.status = status
        return self.client.call("EndTrial", service.EndTrialRequest(trial=ended),
                                self.metadata(trial.trial_id, attempt))

    def get_trial(self, trial_id: str) -> Reply:
        return self.client.call("GetTrial", service.GetTrialRequest(trial_id=trial_id), self.metadata())

    def get_space(self) -> Reply:
        return self.client.call("GetSpace", service.GetSpaceRequest(), self.metadata())

    def finish(self, trial_id: str, value: float) -> Reply:
        """Report `value` for a trial this worker holds, then end it COMPLETED."""
        reply = self.update(trial_id, value)
        if not reply.ok:
            return reply
        return self.end(reply.response.trial)

    def run_until_stopped(self, timeout: float, value: float = 0.5) -> list[str]:
        """Take trials and complete them until the chief says STOPPED; the ids completed.
        UNAVAILABLE is retried (as a worker does); any other refusal raises AssertionError."""
        done, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.create()
            if reply.code == grpc.StatusCode.UNAVAILABLE:
                time.sleep(0.5)
                continue
            assert reply.ok, f"{self.worker}: CreateTrial answered {reply.code.name}: {reply.details}"
            trial = reply.response.trial
            if trial.status == STATUS.STOPPED:
                return done
            if trial.status != STATUS.RUNNING:
                time.sleep(0.2)
                continue
            ended = self.finish(trial.trial_id, value)
            assert ended.ok, f"{self.worker}: ending trial {trial.trial_id} answered {ended.code.name}: {ended.details}"
            done.append(trial.trial_id)
        raise AssertionError(f"{self.worker}: the chief did not say STOPPED within {timeout:.0f}s (done: {done})")

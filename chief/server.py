"""gRPC serving of the coordinator, speaking KerasTuner's own Oracle protocol.

Stock workers and ktcluster workers both talk to it. The chief owns this loop
(not KerasTuner's `start_server`): a thread pool instead of one thread, an
exclusive port (no SO_REUSEPORT: a second chief fails at once instead of
silently splitting the search), errors mapped to gRPC status codes, and a
blocking wait on an event instead of sleep-polling.

Input never reaches a log as a traceback: identity is checked first (with TLS, the peer's
certificate must be a worker's; UpdateSpace then needs a registered worker), payloads are parsed
after it and a payload that cannot be parsed is refused with INVALID_ARGUMENT. Each refusal is
logged as one line, at most once per caller and reason every REFUSAL_LOG_WINDOW seconds.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from concurrent import futures

import grpc
from keras_tuner.engine import hyperparameters as hp_module
from keras_tuner.engine import trial as trial_module

from chief import refusals
from chief.journal import StorageUnavailable
from chief.leases import DuplicateWorker
from chief.refusals import MAX_HYPERPARAMETERS
from chief.trials import Caller, InvalidRequest, NotRegistered, Refused
from shared import config, rpc, tls
from shared.logs import OncePerWindow

log = logging.getLogger("ktcluster.server")
service, service_grpc = rpc.ORACLE_MESSAGES, rpc.ORACLE_GRPC


REFUSAL_LOG_WINDOW = 60.0  # seconds: one line per caller and reason in this window


class PortInUse(RuntimeError):
    pass


class NotAWorker(Refused):
    """A TLS peer whose certificate is not a worker's (the chief's, the health probe's)."""

    code = "PERMISSION_DENIED"


def _who_calls(context) -> str:
    """The caller, for the log: the worker id it names, else its address without the port."""
    worker = rpc.metadata(context).get(rpc.WORKER_KEY)
    if isinstance(worker, str) and worker:
        return worker[:config.MAX_TUNER_ID]
    peer = context.peer() if hasattr(context, "peer") else ""
    return (peer or "unknown").rsplit(":", 1)[0]


def _check_certificate(context) -> None:
    """With TLS, only a worker certificate may call (shared.tls.WORKER_NAME): the chief's and the
    health probe's are signed by the same CA but must not act as a worker. Plaintext: nothing."""
    auth = context.auth_context() if hasattr(context, "auth_context") else {}
    names = auth.get("x509_common_name")
    if names is None:
        return
    if [n.decode("utf-8", "replace") for n in names] != [tls.WORKER_NAME]:
        raise NotAWorker(f"a certificate for {b','.join(names).decode('utf-8', 'replace')[:60]!r} may not call "
                         f"the oracle: only the workers' ({tls.WORKER_NAME}, {tls.WORKER_CERT}) may")


def _guarded(method):
    """Answer a refused request with its status code and one line (nothing changed), a chief that
    cannot store with UNAVAILABLE (the worker retries), and anything else with INTERNAL, logged
    with its traceback: the chief keeps serving either way. Refusals and failures are logged at
    most once per caller (or method) and reason per REFUSAL_LOG_WINDOW. Every call ends with
    `on_call(method, code, seconds)`: its status code's name (OK) and how long it took."""

    def wrapper(self, request, context):
        start, code = time.perf_counter(), "OK"
        try:
            _check_certificate(context)
            return method(self, request, context)
        except Refused as exc:
            code = exc.code
            self._refused(context, method.__name__, exc)
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        except DuplicateWorker as exc:
            code = "ALREADY_EXISTS"
            context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except StorageUnavailable as exc:
            code = "UNAVAILABLE"
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the chief cannot store results now ({exc.strerror}); retry")
        except Exception as exc:
            code = "INTERNAL"
            if self.log_once.allow((method.__name__, type(exc).__name__)):
                log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        finally:
            self.on_call(method.__name__, code, time.perf_counter() - start)

    wrapper.__name__ = method.__name__
    return wrapper


def _ignore(method: str, code: str, seconds: float) -> None:
    """No metrics: each call's name, status code and duration go nowhere."""


class _Servicer:
    """What both services share: the coordinator, the refusal log and `on_call` (every answered
    call's method, status code name and seconds: chief.metrics.ChiefMetrics.rpc)."""

    def __init__(self, coordinator, log_once: OncePerWindow | None = None, on_call=_ignore):
        self.coordinator = coordinator
        self.log_once = log_once or OncePerWindow(REFUSAL_LOG_WINDOW)
        self.on_call = on_call

    def _refused(self, context, method: str, exc: Refused) -> None:
        """One line per caller and reason per window (NotOwner is logged by the coordinator)."""
        if type(exc).__name__ == "NotOwner":
            return
        reason = " ".join(str(exc).split())
        caller = _who_calls(context)
        count = self.log_once.allow((caller, method, type(exc).__name__, reason[:200]))
        if count:
            more = f" ({count - 1} more like it since the last line)" if count > 1 else ""
            log.warning("%s from %s refused (%s): %s%s", method, caller, exc.code, reason[:500], more)


def _parse(what: str, parse):
    """`parse()`, its failure refused as INVALID_ARGUMENT with one line (never a traceback)."""
    try:
        return parse()
    except Exception as exc:
        problem = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise InvalidRequest(f"{what} cannot be read: {problem}") from None


def _caller(context) -> Caller:
    """Who calls: a ktcluster worker sends its id, process instance and attempt; a stock client
    sends none of them. A malformed attempt is refused."""
    meta = rpc.metadata(context)
    worker, instance, attempt = meta.get(rpc.WORKER_KEY), meta.get(rpc.INSTANCE_KEY), meta.get(rpc.ATTEMPT_KEY)
    if (worker is None) != (instance is None):
        raise InvalidRequest(f"metadata {rpc.WORKER_KEY} and {rpc.INSTANCE_KEY} come together, or not at all")
    if attempt is not None and not (attempt.isdigit() and 0 < int(attempt) < 10**6):
        raise InvalidRequest(f"metadata {rpc.ATTEMPT_KEY}={attempt[:20]!r} is not an attempt number")
    return Caller(worker, instance, int(attempt) if attempt is not None else None)


def _report(context) -> tuple[str, list[str] | None]:
    """A finished attempt's message and the hyperparameters its build used (absent from stock workers)."""
    meta = rpc.metadata(context)
    used = meta.get(rpc.USED_KEY)
    message = meta.get(rpc.MESSAGE_KEY, b"").decode("utf-8", "replace")
    if used is None:
        return message, None
    try:
        names = json.loads(used)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) > MAX_HYPERPARAMETERS:
        raise InvalidRequest(f"metadata {rpc.USED_KEY} must be a JSON list of hyperparameter names")
    return message, names


def _string(request: dict, key: str, limit: int, required: bool = True) -> str:
    value = request.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise InvalidRequest(f"{key!r} must be a {'non-empty ' if required else ''}string of at most {limit} "
                             f"characters, not {str(value)[:40]!r}")
    return value


class OracleServicer(_Servicer, service_grpc.OracleServicer):
    """KerasTuner's Oracle service; ktcluster workers add who they are as metadata. Each method
    names the caller, parses its request and hands both to the coordinator."""

    @_guarded
    def GetSpace(self, request, context):
        return service.GetSpaceResponse(hyperparameters=self.coordinator.get_space().to_proto())

    @_guarded
    def UpdateSpace(self, request, context):
        caller = _caller(context)
        if caller.anonymous or not self.coordinator.leases.holds(caller.worker, caller.instance):
            raise NotRegistered("UpdateSpace is accepted only from a registered ktcluster worker")
        space = _parse("UpdateSpace's hyperparameters",
                       lambda: hp_module.HyperParameters.from_proto(request.hyperparameters))
        self.coordinator.update_space(space, caller)
        return service.UpdateSpaceResponse()

    @_guarded
    def CreateTrial(self, request, context):
        trial, attempt = self.coordinator.create_trial(request.tuner_id, _caller(context))
        context.set_trailing_metadata(((rpc.ATTEMPT_KEY, str(attempt)),))
        return service.CreateTrialResponse(trial=trial.to_proto())

    @_guarded
    def UpdateTrial(self, request, context):
        trial = self.coordinator.update_trial(request.trial_id, dict(request.metrics), request.step, _caller(context))
        return service.UpdateTrialResponse(trial=trial.to_proto())

    @_guarded
    def EndTrial(self, request, context):
        caller, (message, used) = _caller(context), _report(context)
        trial = _parse("EndTrial's trial", lambda: trial_module.Trial.from_proto(request.trial))
        trial.status = trial_module.TrialStatus.from_proto(request.trial.status) or "UNKNOWN"
        self.coordinator.end_trial(trial, caller, message, used)
        return service.EndTrialResponse()

    @_guarded
    def GetTrial(self, request, context):
        return service.GetTrialResponse(trial=self.coordinator.get_trial(request.trial_id).to_proto())

    @_guarded
    def GetBestTrials(self, request, context):
        trials = self.coordinator.get_best_trials(request.num_trials)
        return service.GetBestTrialsResponse(trials=[t.to_proto() for t in trials])


class ClusterServicer(_Servicer):
    """ktcluster's own service: worker registration and heartbeats (JSON payloads, checked here)."""

    @staticmethod
    def _who(request) -> tuple[str, str]:
        if not isinstance(request, dict):
            raise InvalidRequest("the request must be a JSON object with 'worker' and 'instance'")
        worker = refusals.request_tuner_id(_string(request, "worker", config.MAX_TUNER_ID), "worker")
        return worker, _string(request, "instance", 128)

    @_guarded
    def Register(self, request, context):
        worker, instance = self._who(request)
        return self.coordinator.register(worker, instance, _string(request, "info", 500, required=False),
                                         fingerprint=request.get("fingerprint"))

    @_guarded
    def Heartbeat(self, request, context):
        return self.coordinator.heartbeat(*self._who(request))


def bind(address: str, max_workers: int = 2, tls_dir: str = ""):
    """Create a server bound exclusively to `address`; raise PortInUse if it is taken. With
    `tls_dir` (KTC_TLS_DIR) it serves mutual TLS only (shared/tls.py; TLSError if unusable).

    Two handler threads: every oracle call holds the coordinator's lock and the GIL, so more
    threads only add GIL hand-offs (benchmarks/RESULTS.md, section 1); two keep one thread
    parsing the next request while the other holds the lock."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="oracle-rpc"),
        options=[("grpc.so_reuseport", 0)],
    )
    credentials = tls.server_credentials(tls_dir)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if not port:
        raise PortInUse(address)
    return server, port


def serve(server, coordinator, on_call=None) -> None:
    """Start serving, then tell the coordinator (`serving`: leases kept across a restart run
    from now); `on_call(method, code, seconds)`, if given, hears of every answered call (chief.metrics).
    What is alive by now (TensorFlow, Keras, the dataset, the oracle) is moved out of the garbage
    collector's reach first (`gc.freeze`) and young collections run every 10,000 allocations: full
    collections over TensorFlow's heap would stall every request."""
    log_once, on_call = OncePerWindow(REFUSAL_LOG_WINDOW), on_call or _ignore
    service_grpc.add_OracleServicer_to_server(OracleServicer(coordinator, log_once, on_call), server)
    server.add_generic_rpc_handlers((rpc.generic_handler(ClusterServicer(coordinator, log_once, on_call)),))
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
    server.start()
    coordinator.serving()

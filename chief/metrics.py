"""The chief's Prometheus metrics (prometheus_client), served over HTTP on KTC_METRICS_PORT.

Two kinds of source, so the RPC hot path pays for one counter and one histogram observation only:
- read when a scraper asks (`SearchCollector`, prometheus_client's custom-collector interface):
  trials by state, the search's progress, workers registered and alive, leases expired and
  storage faults, from the coordinator (`snapshot()`, `presence()`, its leases and storage faults);
- counted where they happen: RPCs per method and status code with their latency (the servicers'
  wrapper in chief.server calls `ChiefMetrics.rpc`), attempts lost and why (the coordinator's
  `on_attempt_end` hook, set by `ChiefMetrics.watch`).

Each chief has its own CollectorRegistry, never prometheus_client's global one, so several chiefs
(tests) can live in one process. Counters count from the chief's start (a restarted chief starts
them again at 0, which Prometheus's rate() expects); the gauges are the search's state, restored
from the journal. The endpoint is plain HTTP and read-only: counts, never hyperparameters or ids.

Metrics (`ktc_` prefix):
  ktc_trials{state}                  gauge   trials by KerasTuner status, as trials.csv has them
  ktc_trials_queued                  gauge   trials waiting for a retry
  ktc_search_trials_done / _total    gauge   completed + failed trials / the trial budget
  ktc_search_finished                gauge   1 once the search is over
  ktc_best_score{objective}          gauge   the best completed trial's score (absent before one)
  ktc_workers_registered / _alive    gauge   ids holding a lease / of those, heard within 2 heartbeats
                                             (stock KerasTuner clients, which send none, count as alive)
  ktc_leases_expired_total           counter worker ids whose lease ran out
  ktc_attempts_lost_total{reason}    counter attempts that did not complete: lease (its worker fell
                                             silent), taken_over (a new process took the worker id),
                                             failure (the worker reported FAILED or INVALID)
  ktc_storage_faults_total{what}     counter failed writes of the journal or the state files
  ktc_storage_failing                gauge   1 while the state disk fails
  ktc_rpc_requests_total{method,code} counter RPCs answered, by gRPC status code
  ktc_rpc_duration_seconds{method}   histogram RPC latency (parsing, the oracle, the journal's commit)
"""

from __future__ import annotations

import collections
import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server

from chief import progress
from chief.trials import Cause

log = logging.getLogger("ktcluster.metrics")

#: trial states always exported (0 when none), whatever else KerasTuner reports
TRIAL_STATES = ("RUNNING", "COMPLETED", "FAILED", "INVALID")
#: why an attempt did not complete (ktc_attempts_lost_total's reason label)
LOST_REASONS = ("lease", "taken_over", "failure")
#: storage that can fail (chief.statefiles.StorageFaults' `what`)
STORAGE = ("journal", "state files")
#: every RPC the chief serves: KerasTuner's Oracle service and ktcluster's own
RPC_METHODS = ("GetSpace", "UpdateSpace", "CreateTrial", "UpdateTrial", "EndTrial", "GetTrial", "GetBestTrials",
               "Register", "Heartbeat")
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def lost_reason(status: str, cause: Cause, message: str) -> str | None:
    """Why an ended attempt counts as lost (one of LOST_REASONS); None for a COMPLETED one. The
    chief ends an attempt itself only when a lease runs out (`LeaseExpired: ...`) or a new
    process takes the worker id (`AttemptLost: ...`, chief.claims)."""
    if status == "COMPLETED":
        return None
    if cause is Cause.OWNER:
        return "failure"
    return "lease" if message.startswith("LeaseExpired") else "taken_over"


class SearchCollector:
    """What is read from the coordinator on each scrape (prometheus_client's Collector interface:
    `collect()` yields metric families): no RPC pays for it. A scrape takes the coordinator's lock
    twice, once for `snapshot()`, a copy of every trial (O(trials): milliseconds at 10,000)."""

    def __init__(self, coordinator):
        self.coordinator = coordinator

    def collect(self):
        coordinator = self.coordinator
        snap = coordinator.snapshot()
        summary = progress.summary(snap)
        presence = coordinator.presence()
        by_state = collections.Counter(str(t.status) for t in snap.trials)
        trials = GaugeMetricFamily("ktc_trials", "Trials by state (KerasTuner's status, as trials.csv has it)",
                                   labels=["state"])
        for state in sorted(set(TRIAL_STATES) | set(by_state)):
            trials.add_metric([state], by_state[state])
        yield trials
        yield GaugeMetricFamily("ktc_trials_queued", "Trials waiting for a retry", value=len(snap.queued))
        yield GaugeMetricFamily("ktc_search_trials_done", "Trials completed or failed",
                                value=summary.completed + summary.failed)
        yield GaugeMetricFamily("ktc_search_trials_total", "The search's trial budget (hyperband: trials so far)",
                                value=summary.total)
        yield GaugeMetricFamily("ktc_search_finished", "1 once the search is over",
                                value=int(coordinator.finished.is_set()))
        if summary.best is not None:
            best = GaugeMetricFamily("ktc_best_score", "The best completed trial's score", labels=["objective"])
            best.add_metric([summary.objective], float(summary.best[1]))
            yield best
        yield GaugeMetricFamily("ktc_workers_registered", "Worker ids holding a lease", value=presence.workers)
        yield GaugeMetricFamily("ktc_workers_alive", "Worker ids holding a lease, heard within two heartbeats",
                                value=presence.workers - len(presence.silent))
        yield CounterMetricFamily("ktc_leases_expired", "Worker ids whose lease ran out",
                                  value=coordinator.leases.expired_count)
        failures = coordinator.faults.failures()
        faults = CounterMetricFamily("ktc_storage_faults", "Failed writes of the state disk", labels=["what"])
        for what in sorted(set(STORAGE) | set(failures)):
            faults.add_metric([what], failures.get(what, 0))
        yield faults
        yield GaugeMetricFamily("ktc_storage_failing", "1 while the state disk fails",
                                value=int(coordinator.faults.failing))


class ChiefMetrics:
    """The chief's registry: the RPC and lost-attempt counters, and (`watch`) the coordinator's
    state read on scrape. Thread-safe (prometheus_client's metrics are)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self._requests = Counter("ktc_rpc_requests", "RPCs answered, by method and gRPC status code",
                                 ["method", "code"], registry=self.registry)
        self._seconds = Histogram("ktc_rpc_duration_seconds", "RPC latency by method", ["method"],
                                  buckets=RPC_BUCKETS, registry=self.registry)
        self._lost = Counter("ktc_attempts_lost", "Attempts that did not complete, by reason", ["reason"],
                             registry=self.registry)
        for method in RPC_METHODS:  # every series from the first scrape on, at 0
            self._seconds.labels(method)
            self._requests.labels(method, "OK")
        for reason in LOST_REASONS:
            self._lost.labels(reason)

    def rpc(self, method: str, code: str, seconds: float) -> None:
        """One answered RPC: `code` is the gRPC status code's name (OK when it succeeded)."""
        self._requests.labels(method, code).inc()
        self._seconds.labels(method).observe(seconds)

    def attempt_ended(self, trial_id: str, status: str, cause: Cause, message: str) -> None:
        """The coordinator's `on_attempt_end`: count the attempt if it was lost (`lost_reason`)."""
        reason = lost_reason(status, cause, message or "")
        if reason is not None:
            self._lost.labels(reason).inc()

    def watch(self, coordinator) -> None:
        """Count `coordinator`'s ended attempts and read its state on every scrape (once per chief)."""
        coordinator.on_attempt_end = self.attempt_ended
        self.registry.register(SearchCollector(coordinator))

    def text(self) -> str:
        """The exposition a scraper gets (Prometheus text format)."""
        return generate_latest(self.registry).decode("utf-8")


class Endpoint:
    """`ChiefMetrics` served at http://HOST:PORT/metrics from a daemon thread; `stop()` closes it."""

    def __init__(self, metrics: ChiefMetrics, host: str, port: int):
        """Bind and serve; OSError if the address cannot be bound (the port is taken)."""
        self.metrics = metrics
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        self._server, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

"""`python -m chief`: serve the search; `python -m chief health`: is it serving?

Exit codes: 0 search finished (results written), 1 runtime failure (e.g. the
dataset could not be downloaded), 2 bad setting (one line naming it).
"""

from __future__ import annotations

import logging
import sys
import threading

from shared import config as config_module
from shared.config import ConfigError

log = logging.getLogger("ktcluster.chief")


def _fail(code: int, message: str) -> int:
    print(f"ktcluster chief: {message}", file=sys.stderr, flush=True)
    return code


def health(settings) -> int:
    from chief.server import wait_ready

    address = f"{'127.0.0.1' if settings.oracle_ip in ('0.0.0.0', '::') else settings.oracle_ip}:{settings.oracle_port}"
    return 0 if wait_ready(address, timeout=3) else 1


def run(settings) -> int:
    from shared.devices import hide_gpus

    hide_gpus()  # the chief trains nothing; leave every GPU to the workers
    from chief import progress
    from chief.server import PortInUse, bind

    try:  # bind first: a second chief or a busy port fails before any slow work
        server, port = bind(settings.oracle_address)
    except PortInUse:
        return _fail(2, f"KERASTUNER_ORACLE_PORT={settings.oracle_port}: {settings.oracle_address} is already "
                        "in use (another chief?); only one chief may serve a port")

    from chief.coordinator import Coordinator
    from chief.server import serve
    from shared import data, hypermodels, tuning
    from shared.data import DataError
    from shared.loader import ImportFromStringError

    try:
        data.prepare(settings.dataset, settings.data_dir)
        dataset = data.load(settings.dataset, settings.data_dir)
        build_model = hypermodels.resolve(settings.model, dataset)
        oracle = tuning.make_oracle(settings)
    except (ConfigError, ImportFromStringError) as exc:
        return _fail(2, str(exc))
    except DataError as exc:
        return _fail(1, str(exc))

    oracle._set_project_dir(settings.state_dir, settings.project)
    oracle.verbose = 0  # the coordinator's progress lines replace KerasTuner's per-trial tables
    coordinator = Coordinator(oracle, settings.lease_seconds, settings.heartbeat_seconds,
                              on_event=progress.log_progress)
    if oracle.trials:
        log.info("resumed project %s: %d trials on record", settings.project, len(oracle.trials))
    try:
        tuning.declare_space(oracle, build_model)
    except Exception as exc:
        return _fail(2, f"KTC_MODEL={settings.model or '(guide model)'}: building the model failed: "
                        f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    oracle.save()
    _write_hparams_config(settings, oracle, build_model, dataset)

    if not coordinator.finished.is_set():  # a finished project is only reported, never re-run
        serve(server, coordinator)
        log.info("oracle serving on port %d: %s search, %s trials, objective %s, dataset %s",
                 port, settings.tuner, settings.max_trials, settings.objective.name, settings.dataset)
        reaper = threading.Thread(target=_reap, args=(coordinator, settings.heartbeat_seconds),
                                  name="lease-reaper", daemon=True)
        reaper.start()
        coordinator.finished.wait()
        unheard = coordinator.wait_for_stop_heard(settings.stop_grace_seconds)
        if unheard:
            log.warning("stopping without telling %s (no request within %.0fs)", ", ".join(unheard),
                        settings.stop_grace_seconds)
        server.stop(grace=5).wait()
    else:
        log.info("project %s is already finished: reporting its results", settings.project)
    snap = coordinator.snapshot()
    coordinator.close()
    log.info(progress.final_report(snap, settings.project_results_dir))
    if snap["fatal"]:
        return _fail(1, f"search stopped: {snap['fatal']}")
    coordinator.mark_finished(progress.summary_record(snap))
    return 0


def _write_hparams_config(settings, oracle, build_model, dataset) -> None:
    """TensorBoard's HParams experiment config from the declared space and the model's metrics."""
    from shared import hparams

    try:
        metrics = hparams.reported_metrics(build_model(oracle.get_space()), dataset.x_val, dataset.y_val)
    except Exception as exc:  # an exotic model: fall back to what the objective names
        log.warning("could not list the model's metrics (%s); declaring loss and the objective only", exc)
        metrics = ["loss", oracle.objective.name.removeprefix("val_")]
    path = hparams.write_experiment_config(settings.project_log_dir, oracle.get_space(), metrics, oracle.objective)
    log.info("HParams config: %d hyperparameters, metrics %s (%s)", len(oracle.get_space().space), metrics, path)


def _reap(coordinator, interval: float) -> None:
    """Expire silent workers' leases until the search is over (no busy polling: event waits)."""
    while not coordinator.finished.wait(interval):
        coordinator.expire_leases()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s chief %(message)s", stream=sys.stdout)
    try:
        settings = config_module.load(role="chief" if not argv else "probe")
    except ConfigError as exc:
        return _fail(2, str(exc))
    if argv == ["health"]:
        return health(settings)
    if argv:
        return _fail(2, f"unknown command {' '.join(argv)!r}: use 'python -m chief' or 'python -m chief health'")
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())

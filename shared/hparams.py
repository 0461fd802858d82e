"""TensorBoard HParams, written with TensorBoard's own hparams summary API.

- Experiment config (chief, once per project, at the log root): every
  hyperparameter of the declared search space with its true domain, plus
  ktcluster's columns `status`, `error`, `worker` and `device`, and the metrics
  the model reports as the oracle records them (`trial/<name>`: KerasTuner
  scores a trial by its best epoch), the objective first, its display name
  carrying its direction (`val accuracy (objective, max)`): sorting the table
  by it puts the chief's best trial first.
- Default columns: the dashboard ticks the first five hyperparameters of the
  config after sorting it by `differs` (true first), then by name, and draws a
  parallel-coordinates line or scatter point only for a trial with a value on
  every ticked column. So `differs` is declared true for exactly five columns
  that every trial records: status, error, worker and the first two
  hyperparameters that every build of the model asks for (`model_type` and
  `dropout` in the guide). Conditional ones (`cnn_layers`, `units_0`, ...) are
  declared, recorded by the trials that used them, one tick away.
- Sessions, one per execution of a trial attempt, in its run
  `<trial>/execution<N>` (attempt 1) or `<trial>/attempt<k>/execution<N>`
  (the run's curves and graphs: `shared.board`):
  * while training, a placeholder session in `<run>/live` (status `running`,
    no metrics) so running trials are listed (TensorBoard keeps the first
    session record of a run, so the placeholder needs a run of its own);
  * at the end, the placeholder gets an end record with a status outside
    TensorBoard's enum (`SUPERSEDED`: the dashboard lists only unknown, success,
    failure and running sessions, so it disappears) and
    the run itself gets the final session: the values the model was built with,
    who ran it where, `status` and a short `error`, SUCCESS or FAILURE, and for
    a completed attempt the trial's metrics (`trial/<name>`).
  * session groups (the table's rows) are named by the trial id for an attempt
    that completed, `<trial> attempt <k>` for one that did not: a retried
    trial's result is never averaged with its dead attempt.
  * an attempt whose worker died is closed by the chief with
    `mark_attempt_lost` (status `lost`, end FAILURE).
"""

from __future__ import annotations

import glob
import math
import os
import time

from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api as hp_api
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary, summary_v2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from shared import results
from shared.logs import last_line

WORKER = "worker"
DEVICE = "device"
STATUS = "status"
ERROR = "error"
STATUSES = ("completed", "failed", "lost", "running")
CONFIG_SUFFIX = ".ktcluster-hparams"
SESSION_SUFFIX = ".ktcluster-session"  # the final session of a run (one per run, never two)
LIVE = "live"  # the placeholder session of a running attempt: <run>/live
# The end status of a placeholder once its attempt has a final session. TensorBoard's Status enum
# has UNKNOWN 0, SUCCESS 1, FAILURE 2, RUNNING 3 and its dashboard asks only for those four;
# proto3 enums keep other values, and the backend drops a session whose status was not asked for.
# So a placeholder ended with 4 leaves the dashboard, and nothing else reads it.
SUPERSEDED = 4
MAX_DISCRETE = 32
DEFAULT_COLUMNS = 5  # what TensorBoard's dashboard ticks on first opening
ERROR_CHARS = 60


def attempt_log_dir(root: str, trial_id: str, attempt: int, execution: int) -> str:
    """<root>/<trial>/execution<N> for a first attempt (KerasTuner's layout), and
    <root>/<trial>/attempt<k>/execution<N> for retries: one clean TensorBoard run per attempt."""
    parts = [trial_id] + ([f"attempt{attempt}"] if attempt > 1 else []) + [f"execution{execution}"]
    return os.path.join(root, *parts)


def group_name(trial_id: str, attempt: int, completed: bool) -> str:
    """The table row of a session: the trial id for the attempt that produced the result."""
    return trial_id if completed else f"{trial_id} attempt {attempt}"


def trial_values(hyperparameters, worker: str, device: str, used=None) -> dict:
    """The values to record for one trial: those the build used (all active ones if unknown)."""
    active = {name: value for name, value in hyperparameters.values.items() if hyperparameters.is_active(name)}
    values = results.used_values(active, used or None)
    values[WORKER] = worker
    values[DEVICE] = device
    return values


def domain(hp):
    """KerasTuner hyperparameter -> TensorBoard domain, exactly as declared."""
    from shared.tuning import discrete_values

    kinds = __import__("keras_tuner").engine.hyperparameters
    values = discrete_values(hp)
    if values is not None and len(values) <= MAX_DISCRETE:
        return hp_api.Discrete(values)
    if isinstance(hp, kinds.Int):
        return hp_api.IntInterval(hp.min_value, hp.max_value)
    if isinstance(hp, kinds.Float):
        return hp_api.RealInterval(float(hp.min_value), float(hp.max_value))
    return None


def _readable(name: str) -> str:
    return name.replace("_", " ")


METRIC_PREFIX = "trial/"  # the oracle's record of a trial's metrics (each at its best epoch), in its final session


def metric_tag(name: str) -> str:
    """The HParams metric of a value the oracle records (`val_accuracy` -> `trial/val_accuracy`)."""
    return METRIC_PREFIX + name


def declared_metrics(metric_names, objective, extra=()) -> list[str]:
    """The metrics `metric_infos` declares: the objective first, then each of `metric_names` and
    its `val_` twin, then `extra` (names as recorded, e.g. a run_trial's own), each once."""
    names = [prefix + name for name in metric_names for prefix in ("val_", "")] + list(extra)
    return list(dict.fromkeys([objective.name] + names))


def metric_infos(metric_names, objective, extra=()) -> list:
    """One HParams metric per value the oracle records for a trial: each of `metric_names`
    (what Keras logs for training) and its `val_` twin, and each of `extra` as it is named, the
    objective first (the dashboard shows the first five) with its direction in its display
    name, so that sorting the table by it, in that direction, lists the chief's best trial first."""
    direction = "max" if objective.direction == "max" else "min"
    names = declared_metrics(metric_names, objective, extra)
    return [hp_api.Metric(metric_tag(name), group="",
                          display_name=f"{_readable(name)} (objective, {direction})" if i == 0
                          else f"{_readable(name)} (best epoch)",
                          description=(f"objective: {'maximize' if direction == 'max' else 'minimize'} {name}, "
                                       "the trial's score as the oracle recorded it") if i == 0
                          else f"{name} at the trial's best epoch, as the oracle recorded it")
            for i, name in enumerate(names)]


def always_used(build_model, space, max_builds: int = 16) -> list[str]:
    """The hyperparameters every build asks for, in declaration order (a best guess).

    Builds the model with the defaults, then once per other value of each Choice or
    Boolean the default build asked for (the switches that pick branches), and keeps the
    names every successful build asked for. The guide: model_type and dropout (3 builds).
    """
    import keras_tuner as kt

    from shared.tuning import recording_used

    kinds = kt.engine.hyperparameters
    defaults = {hp.name: hp.default for hp in space.space}

    def used_by(values):
        hp = space.copy()
        hp.values = {**defaults, **values}
        with recording_used(hp) as used:
            try:
                build_model(hp)
            except Exception:
                return None
        return used

    common = used_by({})
    if common is None:
        return []
    builds = 1
    for hp in [h for h in space.space if h.name in common and isinstance(h, (kinds.Choice, kinds.Boolean))]:
        values = list(hp.values) if isinstance(hp, kinds.Choice) else [False, True]
        for value in values:
            if value == hp.default or builds >= max_builds:
                continue
            builds += 1
            used = used_by({hp.name: value})
            if used is not None:
                common &= used
    return [hp.name for hp in space.space if hp.name in common]


def write_experiment_config(log_root: str, space, metric_names, objective, always=None, extra_metrics=()) -> str:
    """(Re)write the one experiment config of this log root; returns its path.

    `extra_metrics`: metrics declared as named (no `val_` twin; see `metric_infos`).
    `always`: hyperparameters every trial records (`always_used`); the first two of them,
    with status, error and worker, are the five columns shown on first opening (None: the
    first declared hyperparameter, which every build asks for first). TensorBoard uses the
    first config it finds, so an older one of ours is removed first: a re-run chief never
    leaves two conflicting configs.
    """
    os.makedirs(log_root, exist_ok=True)
    for old in glob.glob(os.path.join(log_root, f"events.out.tfevents.*{CONFIG_SUFFIX}")):
        os.unlink(old)
    names = [hp.name for hp in space.space]
    always = names[:1] if always is None else [name for name in always if name in names]
    own = (STATUS, ERROR, WORKER)
    shown = set(own) | set(always[:DEFAULT_COLUMNS - len(own)])
    hparams = [hp_api.HParam(hp.name, domain(hp), display_name=_readable(hp.name)) for hp in space.space]
    hparams += [hp_api.HParam(STATUS, hp_api.Discrete(list(STATUSES)), display_name="status",
                              description="completed, failed (see error), lost (its worker died) or running"),
                hp_api.HParam(ERROR, display_name="error", description="why the attempt failed (full text: Text tab)"),
                hp_api.HParam(WORKER, display_name="worker", description="tuner id of the worker that ran the trial"),
                hp_api.HParam(DEVICE, display_name="device", description="GPU name or CPU")]
    pb = summary_v2.hparams_config_pb(hparams=hparams, metrics=metric_infos(metric_names, objective, extra_metrics))
    experiment = pb.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(experiment.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in shown
        if info.name in (WORKER, DEVICE, ERROR):  # free-form strings: no domain, but a type, so the
            info.type = api_pb2.DATA_TYPE_STRING  # dashboard offers a text filter instead of hiding rows
    experiment.content = data.SerializeToString()
    writer = EventFileWriter(log_root, filename_suffix=CONFIG_SUFFIX)
    writer.add_event(summary_event(pb))
    writer.close()
    return glob.glob(os.path.join(log_root, f"events.out.tfevents.*{CONFIG_SUFFIX}"))[0]


def reported_metrics(model, x, y) -> list[str]:
    """Names Keras will log for this compiled model (loss and compiled metrics), from a 2-sample
    evaluate, run eagerly: tracing a graph for a throw-away model would cost the chief's start-up
    0.1-0.4 s more."""
    model.run_eagerly = True
    results = model.evaluate(x[:2], y[:2], verbose=0, return_dict=True)
    return sorted(results, key=lambda name: (name != "loss", name))


def summary_event(pb, step: int = 0) -> event_pb2.Event:
    """A Summary (TensorFlow's or TensorBoard's own class: the same message) as an event at `step`."""
    summary_pb = summary_pb2.Summary.FromString(pb.SerializeToString())
    return event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb)


def _write(log_dir: str, summaries, suffix: str = "") -> None:
    """One new event file in `log_dir` with these summaries (TensorBoard reads a run's files in
    name order, which is creation time, and never returns to an older one)."""
    writer = EventFileWriter(log_dir, filename_suffix=suffix)
    for pb in summaries:
        writer.add_event(summary_event(pb))
    writer.close()


def _has_final(log_dir: str) -> bool:
    return bool(glob.glob(os.path.join(log_dir, f"events.out.tfevents.*{SESSION_SUFFIX}")))


def _plain(values: dict) -> dict:
    """numpy scalars -> Python values (the session summary accepts bool, int, float, str)."""
    return {name: value.item() if hasattr(value, "item") else value for name, value in values.items()}


def _failure_text(message: str):
    from tensorboard.plugins.text import summary_v2 as text_summary

    return text_summary.text_pb("failure", message)


def write_final_session(log_dir: str, values: dict, group: str, status: str, error: str = "",
                        message: str = "", start_time_secs: float | None = None, metrics: dict | None = None) -> bool:
    """The run's one final session: `values` plus status and error, then its end record
    (SUCCESS for `completed`, else FAILURE), the full `message` in the Text tab (tag
    `failure`) and `metrics` (name -> the oracle's value; non-finite ones are left out) as the
    HParams metrics. False (nothing written) if the run already has one: the first word stands."""
    if _has_final(log_dir):
        return False
    start = summary.session_start_pb(_plain({**values, STATUS: status, ERROR: error}), group_name=group,
                                     start_time_secs=start_time_secs)
    end = summary.session_end_pb(api_pb2.STATUS_SUCCESS if status == "completed" else api_pb2.STATUS_FAILURE)
    scores = [scalar_summary.scalar_pb(metric_tag(name), float(value), description=_SCORE_NOTE.format(name=name))
              for name, value in sorted((metrics or {}).items()) if _finite(value)]
    _write(log_dir, [start] + scores + [end] + ([_failure_text(message)] if message else []), SESSION_SUFFIX)
    return True


_SCORE_NOTE = ("The trial's {name} as the oracle recorded it (at the trial's best epoch): the value the HParams "
               "dashboard shows. The curves are the `epoch/` charts.")


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def write_live_session(log_dir: str, values: dict, group: str, start_time_secs: float) -> None:
    """The placeholder session of an attempt that started training: `<log_dir>/live`, status running."""
    start = summary.session_start_pb(_plain({**values, STATUS: "running", ERROR: ""}), group_name=group,
                                     start_time_secs=start_time_secs)
    _write(os.path.join(log_dir, LIVE), [start])


def end_live_session(log_dir: str) -> None:
    """Take the placeholder off the dashboard once the run has its final session (SUPERSEDED)."""
    _write(os.path.join(log_dir, LIVE), [summary.session_end_pb(SUPERSEDED)])


def _live_start(log_dir: str):
    """The placeholder session's start info in `<log_dir>/live`, or None."""
    for path in sorted(glob.glob(os.path.join(log_dir, LIVE, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    return metadata.parse_session_start_info_plugin_data(value.metadata.plugin_data.content)
    return None


def _python(value):
    kind = value.WhichOneof("kind")
    return {"bool_value": value.bool_value, "number_value": value.number_value,
            "string_value": value.string_value}.get(kind)


def mark_attempt_lost(log_root: str, trial_id: str, attempt: int, reason: str) -> int:
    """Close the sessions of an attempt whose worker is gone; returns how many were closed.

    For the chief, when it re-queues (or fails) an attempt because its worker's lease expired.
    Each execution of the attempt that started training (has a `live` placeholder) and has no
    final session gets one: the placeholder's values, who ran it, `status` = lost, `error` =
    `reason`, end FAILURE, row `<trial> attempt <k>`; the placeholder is ended SUPERSEDED so
    it leaves the dashboard. An execution that never started training has nothing to close.
    Idempotent; files only (no lock needed, call it outside the chief's lock); raises OSError
    if the log folder cannot be written.
    """
    closed = 0
    attempt_dir = os.path.dirname(attempt_log_dir(log_root, trial_id, attempt, 0))
    for log_dir in sorted(glob.glob(os.path.join(attempt_dir, "execution*"))):
        start = _live_start(log_dir)
        if start is None or _has_final(log_dir):
            continue
        values = {name: _python(value) for name, value in start.hparams.items()
                  if name not in (STATUS, ERROR) and _python(value) is not None}
        if write_final_session(log_dir, values, group_name(trial_id, attempt, False), "lost", last_line(reason, ERROR_CHARS),
                               message=reason, start_time_secs=start.start_time_secs):
            closed += 1
        end_live_session(log_dir)
    return closed


def close_earlier_attempts(log_root: str, trial_id: str, attempt: int, worker: str) -> int:
    """The worker's fallback for `mark_attempt_lost`, when it starts attempt `attempt` > 1: any
    earlier attempt still without a final session produced no result. The chief's call, made
    when it re-queued the attempt, comes first and its reason stands."""
    reason = f"no result (worker lost); attempt {attempt} ran on {worker}"
    return sum(mark_attempt_lost(log_root, trial_id, earlier, reason) for earlier in range(1, attempt))

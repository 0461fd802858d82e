"""Opening a project at the chief's start: one chief holds it (chief.ownership), and it runs with
the settings it was started with where those cannot change.

`take(settings)` (chief.__main__.run, once the port is bound, before any slow work):
- takes the project, or raises Refused (exit 2, one line naming the chief that holds it; no
  failure record: that chief is the one the workers need);
- from then on a thread renews the chief's claim, and a chief that finds the project lost (another
  chief took it over while this one was paused or cut off past its lease) prints one line and
  exits 1 at once, from whichever thread found it: nothing more is written;
- checks the settings against the project's record (chief.status.SearchRecord, written at the
  first start): a setting the project cannot change refuses the start, one line each, exit 2;
  a setting that may change is applied and logged once (`KTC_MAX_TRIALS 10 -> 12 (applied)`).

`check_space(settings, recorded, today)` (chief.startup.start, once the oracle is restored, before
today's space is merged into it): the search space is part of what a project is. A hyperparameter
the project recorded (oracle.json) whose domain differs today (type, range, step, sampling,
values) refuses the start, one line each (exit 2, a failure record for the workers): KerasTuner
would go on drawing from the recorded domain and never say so. New hyperparameters are added (one
line); a changed default is kept as recorded (it does not change what is searched; one line);
recorded ones that today's build does not draw are kept (they may be drawn in `fit`, in
`run_trial` or in branches this build did not take).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from chief import ownership, status
from shared import layout
from shared.config import ConfigError

log = logging.getLogger("ktcluster.chief")


class Refused(Exception):
    """The chief must not start: `lines` (one per reason), exit `code`; `record`: leave the failed
    start's record for the workers (shared.layout.CHIEF_FAILED)."""

    def __init__(self, code: int, lines: list[str], record: bool):
        super().__init__("; ".join(lines))
        self.code, self.lines, self.record = code, lines, record


def take(settings) -> ownership.Ownership:
    """Hold the project for this chief (see the module docstring). The caller releases it."""
    project = f"KTC_PROJECT={settings.project}"
    try:
        held = ownership.acquire(settings.project_state_dir, settings.lease_seconds, settings.heartbeat_seconds,
                                 on_wait=_say_waiting(project))
    except ownership.Held as exc:
        raise Refused(2, [f"{project}: {exc}"], record=False) from None
    except OSError as exc:
        raise Refused(1, [f"{project}: cannot take the project in {settings.project_state_dir} ({exc}); the chief "
                          "must be able to create files there: fix KTC_STATE_DIR"], record=True) from None
    held.start(on_lost=_exit_lost(settings))
    log.info("%s: this chief holds the project (generation %d, claim renewed every %gs)", project, held.generation,
             settings.heartbeat_seconds)
    try:
        refused, applied = check_settings(settings, _recorded(settings), lambda: _direction(settings))
    except BaseException:
        held.release()
        raise
    if refused:
        held.release()
        raise Refused(2, refused, record=True)
    for line in applied:
        log.info("%s", line)
    return held


def _say_waiting(project: str):
    def say(claim, generation, lease):
        who = claim.who() if claim is not None else f"another chief (generation {generation})"
        log.warning("%s is held by %s: waiting up to %gs to see whether it still renews its claim; this chief "
                    "takes the project over only if it does not", project, who, lease)

    return say


def _exit_lost(settings):
    def on_lost(reason: str) -> None:
        message = (f"KTC_PROJECT={settings.project}: another chief took the project over while this one was "
                   f"silent past its lease (paused, or cut off from {settings.state_dir}?): {reason}; this chief "
                   "writes nothing more and exits, the other one goes on with the search")
        try:
            sys.stdout.flush()
            print(f"ktcluster chief: {message}", file=sys.stderr, flush=True)
        finally:
            os._exit(1)

    return on_lost


def _recorded(settings) -> dict:
    try:
        return status.read_search_fields(settings.project_state_dir) or {}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("KTC_PROJECT=%s: %s cannot be read (%s): the settings are not checked against it; it is "
                    "written again", settings.project, layout.SEARCH_RECORD, type(exc).__name__)
        return {}


def _direction(settings) -> str | None:
    """The direction the chief's oracle will optimise KTC_OBJECTIVE in (KerasTuner infers it from
    the name when none is given); None when KerasTuner cannot tell (the start fails on that)."""
    if settings.objective.direction:
        return settings.objective.direction
    from shared import tuning

    try:
        return tuning.make_oracle(settings).objective.direction
    except ConfigError:
        return None


def _algorithm(tuner: str) -> str | None:
    """The search algorithm KTC_TUNER runs (a `module:Class` tuner's is its base class's: its
    module is imported); None for a class that is no tuner (the start refuses it with its line)."""
    from shared import tuning

    try:
        return tuning.resolve_tuner(tuner).algorithm
    except ConfigError:
        return None


def _shown(value) -> str:
    return "(empty)" if value is None or value == "" else f"{value:g}" if isinstance(value, float) else str(value)


def check_settings(settings, recorded: dict, direction) -> tuple[list[str], list[str]]:
    """(refusals, changes applied): one line each, comparing `settings` with the project's record
    (`recorded`: its fields as written; an absent field was not recorded, so nothing is compared).
    `direction()`: the objective's direction as the chief will optimise it (called only when
    needed: it may import KerasTuner)."""
    project, refused, applied = settings.project, [], []

    def refuse(name: str, old, new, why: str) -> None:
        refused.append(f"{name}={_shown(new)}: project {project} was started with {name}={_shown(old)} and "
                       f"{why}; set {name}={_shown(old)} again, or start a new search under another KTC_PROJECT")

    tuner = _algorithm(recorded.get("tuner", settings.tuner))
    if "tuner" in recorded and recorded["tuner"] != settings.tuner:
        refuse("KTC_TUNER", recorded["tuner"], settings.tuner,
               "cannot change it: its trials and oracle state (oracle.json) are that tuner's")
    name = settings.objective.name
    if "objective" in recorded and recorded["objective"] != name:
        refuse("KTC_OBJECTIVE", recorded["objective"], name,
               f"cannot change it: its trials are scored and ranked by {recorded['objective']}")
    elif recorded.get("direction") in ("min", "max"):
        now = direction()
        if now is not None and now != recorded["direction"]:
            refuse("KTC_OBJECTIVE", f"{name}:{recorded['direction']}", f"{name}:{now}",
                   f"cannot change the direction: its trials are ranked by {name} ({recorded['direction']})")
    if "seed" in recorded and recorded["seed"] != settings.seed and tuner != "grid":
        refuse("KTC_SEED", recorded["seed"], settings.seed,
               f"cannot change it: the {tuner} search goes on with the seed kept in oracle.json")
    if tuner == "hyperband" and "epochs" in recorded and recorded["epochs"] != settings.epochs:
        refuse("KTC_EPOCHS", recorded["epochs"], settings.epochs,
               "cannot change it: hyperband's brackets were made for that many epochs (kept in oracle.json)")

    changeable = []
    if _algorithm(settings.tuner) != "hyperband":  # hyperband's budget is its own, and its epochs are fixed (above)
        changeable += [("KTC_MAX_TRIALS", "max_trials", settings.max_trials), ("KTC_EPOCHS", "epochs", settings.epochs)]
    changeable += [("KTC_LEASE_SECONDS", "lease_seconds", settings.lease_seconds),
                   ("KTC_HEARTBEAT_SECONDS", "heartbeat_seconds", settings.heartbeat_seconds),
                   ("KTC_MAX_RETRIES", "max_retries", settings.max_retries)]
    for setting, field, now in changeable:
        old = recorded.get(field)
        if old is not None and not isinstance(old, bool) and isinstance(old, (int, float)) and old != now:
            applied.append(f"{setting} {_shown(old)} -> {_shown(now)} (applied)")
    return refused, applied


# -- the search space -----------------------------------------------------------------------------
_NOT_DOMAIN = ("name", "default", "conditions")  # a hyperparameter's config keys that are not its domain


@dataclasses.dataclass(frozen=True)
class SpaceChanges:
    """Today's space against the recorded one: `changed` (name, old domain, new domain) for each
    hyperparameter in both whose domain differs; `added`: names only today has; `defaults`:
    (name, old default, new default) for a domain kept with another default."""

    changed: list[tuple[str, str, str]]
    added: list[str]
    defaults: list[tuple[str, object, object]]


def _key(hp) -> tuple:
    """A hyperparameter's identity as KerasTuner keeps it (`HyperParameters._exists`): its name and
    conditions (a name may be declared under several conditions)."""
    return hp.name, repr([c.get_config() for c in hp.conditions])


def _domain(hp) -> dict:
    return {"type": type(hp).__name__,
            **{k: v for k, v in hp.get_config().items() if k not in _NOT_DOMAIN}}


def describe(hp, fields=()) -> str:
    """A domain in one short form: `Int(16..64)`, `Int(16..64, step 16)`, `Float(0.0001..0.01, log)`,
    `Choice('relu', 'tanh')`, `Boolean`, `Fixed(3)`; `fields`: config keys to show as well."""
    config, kind = hp.get_config(), type(hp).__name__
    if "min_value" in config:
        parts = [f"{config['min_value']}..{config['max_value']}"]
        if config.get("step") not in (None, 1):
            parts.append(f"step {config['step']}")
        if config.get("sampling") not in (None, "linear"):
            parts.append(str(config["sampling"]))
    elif "values" in config:
        parts = [repr(v) for v in config["values"]]
    elif "value" in config:
        parts = [repr(config["value"])]
    else:
        parts = []
    parts += [f"{k}={config[k]!r}" for k in fields if k in config]
    return f"{kind}({', '.join(parts)})" if parts else kind


def compare_spaces(recorded, today) -> SpaceChanges:
    """Compare two `keras_tuner.HyperParameters` (see the module docstring for what counts)."""
    before = {_key(hp): hp for hp in recorded.space}
    changed, added, defaults = [], [], []
    for hp in today.space:
        old = before.get(_key(hp))
        if old is None:
            added.append(hp.name)
            continue
        was, now = _domain(old), _domain(hp)
        if was != now:
            shown = (describe(old), describe(hp))
            if shown[0] == shown[1]:  # they differ in a field the short form leaves out
                fields = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
                shown = (describe(old, fields), describe(hp, fields))
            changed.append((hp.name, *shown))
        elif getattr(old, "default", None) != getattr(hp, "default", None):
            defaults.append((hp.name, old.default, hp.default))
    return SpaceChanges(changed, added, defaults)


def check_space(settings, recorded, today) -> None:
    """Refuse the start (Refused: exit 2, one line per changed hyperparameter, a failure record)
    when today's space changes the domain of a hyperparameter the project recorded; log what is
    added and what is kept. `recorded`: the restored oracle's space; `today`: the explored one."""
    changes = compare_spaces(recorded, today)
    if changes.changed:
        project = settings.project
        raise Refused(2, [f"KTC_MODEL: hyperparameter {name!r} was {old}, is now {new}: project {project} searched "
                          f"{old} (its trials and oracle.json); start a new KTC_PROJECT to search a different "
                          "space, or change the model back" for name, old, new in changes.changed], record=True)
    if recorded.space and changes.added:
        log.info("KTC_MODEL: added to project %s's search space: %s", settings.project, ", ".join(changes.added))
    for name, old, new in changes.defaults:
        log.info("KTC_MODEL: hyperparameter %r default %r -> %r: the recorded default %r is kept (a default does "
                 "not change what is searched)", name, old, new, old)

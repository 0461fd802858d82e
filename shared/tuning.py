"""One place that turns settings into KerasTuner objects, for chief and workers alike.

Private KerasTuner names used here (by `recording_used` only, on one HyperParameters instance):
- `HyperParameters._retrieve(hp)`: every `hp.Choice/Int/Float/Boolean/Fixed` call goes through
  it; wrapped to learn which hyperparameters a build asked for;
- `HyperParameters._get_name(name)`: the full (conditional-scope) name `hp.get` reads.
"""

from __future__ import annotations

import contextlib

from shared.config import ConfigError, Settings


def make_oracle(settings: Settings, extend=None):
    """The KerasTuner oracle for KTC_TUNER. `extend(cls) -> subclass`, if given, extends the stock
    class first (the chief's `chief.oracle.cluster_class`); workers use the stock class as it is."""
    import keras_tuner as kt

    def build(cls, **kwargs):
        return (extend(cls) if extend else cls)(**kwargs)

    objective = settings.objective.name
    if settings.objective.direction:
        objective = kt.Objective(objective, settings.objective.direction)
    common = dict(objective=objective, seed=settings.seed, max_retries_per_trial=settings.max_retries,
                  max_consecutive_failed_trials=settings.max_consecutive_failures)
    try:
        if settings.tuner == "hyperband":
            return build(kt.oracles.HyperbandOracle, max_epochs=settings.epochs, **common)
        oracle_class = {
            "random": kt.oracles.RandomSearchOracle,
            "bayesian": kt.oracles.BayesianOptimizationOracle,
            "grid": kt.oracles.GridSearchOracle,
        }[settings.tuner]
        return build(oracle_class, max_trials=settings.max_trials, **common)
    except ValueError as exc:  # e.g. a direction KerasTuner cannot infer from the name
        raise ConfigError("KTC_OBJECTIVE", settings.objective.name,
                          f"{' '.join(str(exc).split())[:120]}; write NAME:min or NAME:max") from None


MAX_EXPLORE_BUILDS = 200
MAX_DISCRETE_VALUES = 16


def discrete_values(hp) -> list | None:
    """The values of a hyperparameter with a small finite domain, else None (e.g. Float)."""
    import keras_tuner as kt

    kinds = kt.engine.hyperparameters
    if isinstance(hp, kinds.Choice):
        return list(hp.values)
    if isinstance(hp, kinds.Boolean):
        return [False, True]
    if isinstance(hp, kinds.Fixed):
        return [hp.value]
    if isinstance(hp, kinds.Int):
        step = hp.step or 1
        if hp.sampling in (None, "linear") and (hp.max_value - hp.min_value) // step + 1 <= MAX_DISCRETE_VALUES:
            return list(range(hp.min_value, hp.max_value + 1, step))
    return None


def explore_space(build_model, hyperparameters=None):
    """Every hyperparameter the model can declare, plain-`if` branches included.

    The guide's model declares `cnn_layers` and `filters_i` only when
    model_type == "cnn" (no conditional_scope), so one build with defaults sees
    half the space. Starting from the defaults, each discrete value of each
    known hyperparameter is tried once per assignment that revealed new names,
    until no build reveals more (bounded by MAX_EXPLORE_BUILDS). Builds that
    raise are skipped: they are exactly the combinations a trial would fail on.
    """
    import keras_tuner as kt

    space = hyperparameters.copy() if hyperparameters is not None else kt.HyperParameters()
    space.values = {hp.name: hp.default for hp in space.space}  # a resumed project's space is known
    build_model(space)  # the defaults must build: raise if they do not
    explored, frontier, builds = [], [dict(space.values)], 0
    while frontier and builds < MAX_EXPLORE_BUILDS:
        base = frontier.pop(0)
        explored.append(base)
        for hp in list(space.space):
            for value in discrete_values(hp) or ():
                if builds >= MAX_EXPLORE_BUILDS:
                    break
                candidate = {**base, hp.name: value}
                if candidate in explored or candidate in frontier:
                    continue
                trial_hp = space.copy()
                trial_hp.values = {**{h.name: h.default for h in space.space}, **candidate}
                known = {h.name for h in space.space}
                builds += 1
                try:
                    build_model(trial_hp)
                except Exception:
                    continue
                new = [h for h in trial_hp.space if h.name not in known]
                if new:
                    space.merge(new)
                    frontier.append(candidate)
    space.values = {}
    for hp in space.space:
        space.values[hp.name] = hp.default
    return space


@contextlib.contextmanager
def recording_used(hyperparameters):
    """Collect the names of the hyperparameters a build actually asks for.

    Every `hp.Choice/Int/Float/Boolean/Fixed` call goes through `_retrieve`,
    and `hp.get` reads by name; wrapping both on this one instance tells a
    trial's used values from the ones the oracle sampled for other branches.
    """
    used: set[str] = set()
    retrieve, get = hyperparameters._retrieve, hyperparameters.get

    def _retrieve(hp):
        used.add(hp.name)
        return retrieve(hp)

    def _get(name):
        used.add(hyperparameters._get_name(name))
        return get(name)

    hyperparameters._retrieve, hyperparameters.get = _retrieve, _get
    try:
        yield used
    finally:
        del hyperparameters._retrieve, hyperparameters.get

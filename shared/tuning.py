"""One place that turns settings into KerasTuner objects, for chief and workers alike.

KTC_TUNER is one of config.TUNERS or `module:Class` (`resolve_tuner`): a subclass of
RandomSearch, BayesianOptimization, Hyperband or GridSearch runs that tuner's algorithm; a direct
`keras_tuner.Tuner` subclass names its algorithm in the class attribute `ktc_oracle` (one of
config.TUNERS). The chief runs the algorithm's oracle (`make_oracle`), built from the settings;
the workers run the user's class (worker.tuners).

Private KerasTuner names used here (by `recording_used` only, on one HyperParameters instance):
- `HyperParameters._retrieve(hp)`: every `hp.Choice/Int/Float/Boolean/Fixed` call goes through
  it; wrapped to learn which hyperparameters a trial asked for (in its build, its fit, its run_trial);
- `HyperParameters._get_name(name)`: the full (conditional-scope) name `hp.get` reads.
"""

from __future__ import annotations

import contextlib
import dataclasses

from shared.config import NO_MODEL, TUNERS, ConfigError, Settings
from shared.loader import import_from_string

ORACLE_ATTRIBUTE = "ktc_oracle"  # a direct keras_tuner.Tuner subclass names its algorithm here


@dataclasses.dataclass(frozen=True)
class TunerChoice:
    """What KTC_TUNER resolves to: `algorithm`, one of config.TUNERS (the oracle the chief runs),
    and `user_class`, the user's Tuner subclass (None for a built-in name)."""

    algorithm: str
    user_class: type | None = None

    @property
    def runs_own_trial(self) -> bool:
        """The user's class defines `run_trial` itself (not only KerasTuner's tuners)."""
        return self.user_class is not None and any(
            "run_trial" in vars(cls) for cls in self.user_class.__mro__
            if not cls.__module__.startswith("keras_tuner"))


def resolve_tuner(tuner: str) -> TunerChoice:
    """KTC_TUNER -> TunerChoice. A built-in name imports nothing; `module:Class` imports the
    user's module. Raises ConfigError (one line naming KTC_TUNER and what was found) for a class
    that is not a KerasTuner tuner, or a Tuner subclass without a valid `ktc_oracle`."""
    if tuner in TUNERS:
        return TunerChoice(tuner)
    import keras_tuner as kt

    cls = import_from_string(tuner, "KTC_TUNER", require_callable=False)
    if not isinstance(cls, type) or not issubclass(cls, kt.Tuner):
        found = f"the class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ConfigError("KTC_TUNER", tuner, f"it is {found}, not a subclass of keras_tuner.Tuner (RandomSearch, "
                          "BayesianOptimization, Hyperband, GridSearch or Tuner)")
    for base, algorithm in ((kt.Hyperband, "hyperband"), (kt.BayesianOptimization, "bayesian"),
                            (kt.GridSearch, "grid"), (kt.RandomSearch, "random")):
        if issubclass(cls, base):
            return TunerChoice(algorithm, cls)
    named = getattr(cls, ORACLE_ATTRIBUTE, None)
    if named not in TUNERS:
        raise ConfigError("KTC_TUNER", tuner, f"{cls.__name__} subclasses keras_tuner.Tuner directly, so it must name "
                          f"its search algorithm: the class attribute {ORACLE_ATTRIBUTE} = one of "
                          f"{', '.join(map(repr, TUNERS))} (found {named!r})")
    return TunerChoice(named, cls)


def check_model_for(choice: TunerChoice, model: str) -> None:
    """KTC_MODEL=none needs a KTC_TUNER class whose own run_trial makes do without a model;
    ConfigError (one line) otherwise."""
    if model == NO_MODEL and not choice.runs_own_trial:
        found = "a built-in tuner" if choice.user_class is None else f"{choice.user_class.__name__}, which does not"
        raise ConfigError("KTC_MODEL", model, f"no model needs a KTC_TUNER class that overrides run_trial "
                          f"(KTC_TUNER is {found})")


def user_callbacks(settings: Settings):
    """KTC_CALLBACKS as a function of no arguments returning a fresh list of Keras callbacks for
    one trial attempt (an empty list when unset); it is called once here to check what it
    returns: ConfigError (one line naming KTC_CALLBACKS and what was found) if not callbacks."""
    if not settings.callbacks:
        return list
    make = import_from_string(settings.callbacks, "KTC_CALLBACKS")

    def fresh() -> list:
        made = make()
        if not isinstance(made, (list, tuple)) or not all(_is_callback(c) for c in made):
            shown = type(made).__name__ if not isinstance(made, (list, tuple)) else \
                "a list holding " + ", ".join(sorted({type(c).__name__ for c in made if not _is_callback(c)}))
            raise ConfigError("KTC_CALLBACKS", settings.callbacks,
                              f"it returned {shown}, not a list of keras.callbacks.Callback")
        return list(made)

    try:
        fresh()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError("KTC_CALLBACKS", settings.callbacks,
                          f"calling it raised {type(exc).__name__}: {' '.join(str(exc).split())[:160]}") from None
    return fresh


def _is_callback(value) -> bool:
    import keras

    return isinstance(value, keras.callbacks.Callback)


def make_oracle(settings: Settings, extend=None):
    """The KerasTuner oracle of KTC_TUNER's algorithm (`resolve_tuner`). `extend(cls) -> subclass`,
    if given, extends the stock class first (the chief's `chief.oracle.cluster_class`); workers use
    the stock class as it is."""
    import keras_tuner as kt

    algorithm = resolve_tuner(settings.tuner).algorithm

    def build(cls, **kwargs):
        return (extend(cls) if extend else cls)(**kwargs)

    objective = settings.objective.name
    if settings.objective.direction:
        objective = kt.Objective(objective, settings.objective.direction)
    common = dict(objective=objective, seed=settings.seed, max_retries_per_trial=settings.max_retries,
                  max_consecutive_failed_trials=settings.max_consecutive_failures)
    try:
        if algorithm == "hyperband":
            return build(kt.oracles.HyperbandOracle, max_epochs=settings.epochs, **common)
        oracle_class = {
            "random": kt.oracles.RandomSearchOracle,
            "bayesian": kt.oracles.BayesianOptimizationOracle,
            "grid": kt.oracles.GridSearchOracle,
        }[algorithm]
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
    """Collect the names of the hyperparameters asked for while the block runs (a build, or a
    whole trial attempt: its build, its HyperModel.fit and its Tuner's run_trial).

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

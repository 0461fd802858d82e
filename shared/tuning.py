"""One place that turns settings into KerasTuner objects, for chief and workers alike."""

from __future__ import annotations

from shared.config import ConfigError, Settings


def make_oracle(settings: Settings):
    """The stock KerasTuner oracle for KTC_TUNER, untouched: ktcluster wraps it, never forks it."""
    import keras_tuner as kt

    objective = settings.objective.name
    if settings.objective.direction:
        objective = kt.Objective(objective, settings.objective.direction)
    common = dict(objective=objective, seed=settings.seed, max_retries_per_trial=settings.max_retries,
                  max_consecutive_failed_trials=settings.max_consecutive_failures)
    try:
        if settings.tuner == "hyperband":
            return kt.oracles.HyperbandOracle(max_epochs=settings.epochs, **common)
        oracle_class = {
            "random": kt.oracles.RandomSearchOracle,
            "bayesian": kt.oracles.BayesianOptimizationOracle,
            "grid": kt.oracles.GridSearchOracle,
        }[settings.tuner]
        return oracle_class(max_trials=settings.max_trials, **common)
    except ValueError as exc:  # e.g. a direction KerasTuner cannot infer from the name
        raise ConfigError("KTC_OBJECTIVE", settings.objective.name,
                          f"{' '.join(str(exc).split())[:120]}; write NAME:min or NAME:max") from None


def declare_space(oracle, build_model) -> None:
    """Register every hyperparameter the model declares with the oracle (chief, before serving)."""
    hp = oracle.get_space()
    build_model(hp)
    oracle.update_space(hp)

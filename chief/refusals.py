"""Refusals of what a worker sends that must not reach the oracle: a search space that cannot be
sampled or is too large, a progress report whose metrics are not finite numbers with sane names,
a tuner id that is not one. Each is refused once, here, as the request's InvalidRequest.
"""

from __future__ import annotations

import math

from chief.trials import InvalidRequest
from shared import config

MAX_HYPERPARAMETERS = 1000
MAX_NAME_LENGTH = 128


class InvalidSpace(ValueError):
    """A search space sent by a worker that must not reach the oracle; `str()` says why."""


def check_metrics(metrics: dict) -> None:
    """Raise ValueError unless a progress report is safe to record: at most MAX_HYPERPARAMETERS
    metrics with sane names and finite values (an infinite objective would become the best
    trial, a NaN one a silent retry), and the objective among them (stock would raise that
    inside its lock)."""
    if len(metrics) > MAX_HYPERPARAMETERS:
        raise ValueError(f"{len(metrics)} metrics: at most {MAX_HYPERPARAMETERS} are allowed")
    for name, value in metrics.items():
        if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
            raise ValueError(f"metric name {name[:40]!r}: 1 to {MAX_NAME_LENGTH} printable characters")
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"metric {name}={value!r} is not a finite number (a diverged training: end the "
                             "attempt FAILED with why)")


def check_space(space: list, hyperparameters) -> None:
    """Raise InvalidSpace unless merging `hyperparameters` into the space is safe: finite
    numbers, names of sane length, conditions on known parents, at most MAX_HYPERPARAMETERS in
    all (`space`: the oracle's hyperparameters now)."""
    known = {hp.name for hp in space}
    names = known | {hp.name for hp in hyperparameters.space}
    if len(names) > MAX_HYPERPARAMETERS:
        raise InvalidSpace(f"{len(names)} hyperparameters: at most {MAX_HYPERPARAMETERS} are allowed")
    for hp in hyperparameters.space:
        if not hp.name or len(hp.name) > MAX_NAME_LENGTH or not hp.name.isprintable():
            raise InvalidSpace(f"hyperparameter name {hp.name[:40]!r}...: 1 to {MAX_NAME_LENGTH} printable "
                               "characters")
        config = hp.get_config()
        for key in ("min_value", "max_value", "step", "default", "value", "values"):
            values = config.get(key)
            for value in values if isinstance(values, list) else [values]:
                if isinstance(value, float) and not math.isfinite(value):
                    raise InvalidSpace(f"hyperparameter {hp.name!r}: {key} {value} is not a finite number")
        _check_shape(hp.name, config)
        for condition in hp.conditions:
            if condition.name not in names:
                raise InvalidSpace(f"hyperparameter {hp.name!r}: its condition names {condition.name!r}, "
                                   "which is not in the space")


def _check_shape(name: str, config: dict) -> None:
    """InvalidSpace unless a hyperparameter can be sampled: min <= max, a positive step, a
    Choice with values, a known sampling."""
    low, high, step = config.get("min_value"), config.get("max_value"), config.get("step")
    if low is not None and high is not None and low > high:
        raise InvalidSpace(f"hyperparameter {name!r}: min_value {low} is greater than max_value {high}")
    if step is not None and not step > 0:
        raise InvalidSpace(f"hyperparameter {name!r}: step {step} must be greater than 0")
    if "values" in config and not config["values"]:
        raise InvalidSpace(f"hyperparameter {name!r}: a Choice needs at least one value")
    sampling = config.get("sampling")
    if sampling is not None and sampling not in ("linear", "log", "reverse_log"):
        raise InvalidSpace(f"hyperparameter {name!r}: sampling {sampling!r} is not linear, log or reverse_log")


def request_space(oracle, hyperparameters, what: str) -> None:
    """InvalidRequest ("`what`: why") unless the oracle may take `hyperparameters` into its space."""
    try:
        oracle.check_space(hyperparameters)
    except InvalidSpace as exc:
        raise InvalidRequest(f"{what}: {exc}") from None


def request_tuner_id(tuner_id: str, name: str) -> str:
    """`tuner_id` if it is a valid worker id (shared.config), else InvalidRequest with config's line."""
    try:
        return config.validate_tuner_id(tuner_id, name=name)
    except config.ConfigError as exc:
        raise InvalidRequest(str(exc)) from None

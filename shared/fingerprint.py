"""The settings a worker must share with its chief, compared at Register.

A worker started with another KTC_MODEL (or dataset, tuner, objective, epochs) than the chief
would mix its search space into the chief's and train models the chief cannot load. The worker
sends its `Fingerprint` with Register; the chief refuses one that differs from its own with one
line naming each difference (`differences`). `space` is a digest of the hyperparameters the
model declares in one build with every default (`space_digest`; hyperparameters a trial draws in
`fit` or `run_trial` are not in it): the same code builds the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

FIELDS = {  # field -> the setting that sets it
    "model": "KTC_MODEL", "dataset": "KTC_DATASET", "tuner": "KTC_TUNER", "objective": "KTC_OBJECTIVE",
    "epochs": "KTC_EPOCHS", "space": "the search space the model declares",
}
MAX_VALUE = 300  # characters of one field on the wire


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What must agree between chief and workers, each as a short string."""

    model: str
    dataset: str
    tuner: str
    objective: str
    epochs: str
    space: str

    def to_wire(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, value) -> Fingerprint:
        """Parse what a worker sent; ValueError (one line) for anything but an object of short strings."""
        if not isinstance(value, dict) or set(value) - set(FIELDS):
            raise ValueError(f"fingerprint must be an object with the keys {', '.join(FIELDS)}")
        for key in FIELDS:
            if not isinstance(value.get(key), str) or len(value[key]) > MAX_VALUE:
                raise ValueError(f"fingerprint {key!r} must be a string of at most {MAX_VALUE} characters")
        return cls(**{key: value[key] for key in FIELDS})


NO_MODEL_SPACE = "no model"


def space_digest(build_model) -> str:
    """A digest of the hyperparameters `build_model` declares in one build with defaults (the
    name of the error if that build raises: it then differs from any model that builds);
    NO_MODEL_SPACE for no model (KTC_MODEL=none)."""
    import keras_tuner as kt

    if build_model is None:
        return NO_MODEL_SPACE
    hp = kt.HyperParameters()
    try:
        build_model(hp)
    except Exception as exc:  # the chief refuses to start on such a model; a worker is told here
        return f"unbuildable ({type(exc).__name__})"
    space = json.dumps(hp.get_config()["space"], sort_keys=True, default=str)
    return hashlib.sha256(space.encode()).hexdigest()[:16]


def of(settings, hypermodel) -> Fingerprint:
    """The fingerprint of these settings (shared.config.Settings) and model (a keras_tuner
    HyperModel, a build_model(hp) function, or None for no model)."""
    build_model = getattr(hypermodel, "build", hypermodel)
    objective = settings.objective.name + (f":{settings.objective.direction}" if settings.objective.direction else "")
    return Fingerprint(model=settings.model or "(guide model)", dataset=settings.dataset, tuner=settings.tuner,
                       objective=objective, epochs=str(settings.epochs), space=space_digest(build_model))


def differences(chief: Fingerprint, worker) -> list[str]:
    """One phrase per field where `worker` (a Fingerprint, or what the wire carried) differs from
    `chief`, naming the setting and both values; empty when they agree."""
    try:
        theirs = worker if isinstance(worker, Fingerprint) else Fingerprint.from_wire(worker)
    except ValueError as exc:
        return [str(exc)]
    found = []
    for key, setting in FIELDS.items():
        mine, other = getattr(chief, key), getattr(theirs, key)
        if mine != other:
            found.append(f"{setting} is {other!r} on the worker, {mine!r} on the chief")
    return found

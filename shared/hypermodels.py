"""The model to tune: what the user gives KTC_MODEL, or the KerasTuner guide's.

KTC_MODEL takes what `keras_tuner.Tuner(hypermodel=...)` takes (`resolve`): a `build_model(hp)`
function, a `keras_tuner.HyperModel` instance, or a HyperModel subclass (made with no
arguments); `none` (config.NO_MODEL) is no hypermodel, for a KTC_TUNER class whose `run_trial`
needs none. Whatever the shape, callers get a `keras_tuner.HyperModel` (or None): a function is
wrapped the way KerasTuner wraps it, so `hypermodel.build(hp)` and a user's `fit` override work
alike on chief and workers.

The default is the search space of the KerasTuner guide "Visualize the
hyperparameter tuning process": an MLP or a CNN (model_type, mlp_layers,
units_i, cnn_layers, filters_i, dropout), compiled for sparse categorical
cross-entropy with accuracy. It adapts to the dataset's input shape and class
count so the same space runs on MNIST (28x28, the guide's exact model) and on
scikit-learn's 8x8 digits (convolutions there use 'same' padding, since three
'valid' 3x3 conv + pool blocks cannot fit in 8x8).
"""

from __future__ import annotations

from shared.config import NO_MODEL
from shared.loader import ImportFromStringError, import_from_string

GUIDE_IMAGE_SIDE = 28


def guide_build_model(input_shape, num_classes):
    """The guide's `build_model(hp)`, bound to a dataset's shape."""
    import keras
    from keras import layers

    padding = "valid" if min(input_shape[:2]) >= GUIDE_IMAGE_SIDE else "same"

    def build_model(hp):
        inputs = keras.Input(shape=input_shape)
        model_type = hp.Choice("model_type", ["mlp", "cnn"])
        x = inputs
        if model_type == "mlp":
            x = layers.Flatten()(x)
            for i in range(hp.Int("mlp_layers", 1, 3)):
                x = layers.Dense(units=hp.Int(f"units_{i}", 32, 128, step=32), activation="relu")(x)
        else:
            for i in range(hp.Int("cnn_layers", 1, 3)):
                x = layers.Conv2D(
                    hp.Int(f"filters_{i}", 32, 128, step=32),
                    kernel_size=(3, 3),
                    activation="relu",
                    padding=padding,
                )(x)
                x = layers.MaxPooling2D(pool_size=(2, 2), padding=padding)(x)
            x = layers.Flatten()(x)
        if hp.Boolean("dropout"):
            x = layers.Dropout(0.5)(x)
        outputs = layers.Dense(units=num_classes, activation="softmax")(x)
        model = keras.Model(inputs=inputs, outputs=outputs)
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"], optimizer="adam")
        return model

    return build_model


def as_hypermodel(build_model):
    """A `build_model(hp)` function as a keras_tuner.HyperModel whose `build` calls it (what
    KerasTuner's Tuner makes of a function)."""
    import keras_tuner as kt

    class FunctionHyperModel(kt.HyperModel):
        def build(self, hp):
            return build_model(hp)

    return FunctionHyperModel(name=getattr(build_model, "__name__", None))


def resolve(model: str, dataset):
    """The `keras_tuner.HyperModel` for KTC_MODEL (empty: the guide's, fitted to `dataset`), or
    None for `none`. Raises ImportFromStringError (one line: the setting and what was found) for
    a value that is none of the accepted shapes or a HyperModel subclass that cannot be made."""
    import keras_tuner as kt

    if not model:
        return as_hypermodel(guide_build_model(dataset.input_shape, dataset.num_classes))
    if model == NO_MODEL:
        return None
    value = import_from_string(model, "KTC_MODEL", require_callable=False)
    if isinstance(value, kt.HyperModel):
        return value
    if isinstance(value, type) and issubclass(value, kt.HyperModel):
        try:
            return value()
        except Exception as exc:
            raise ImportFromStringError(
                f"KTC_MODEL={model!r}: the HyperModel subclass {value.__name__} could not be made with no "
                f"arguments ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); give an instance "
                "instead", "KTC_MODEL") from None
    if callable(value) and not isinstance(value, type):
        return as_hypermodel(value)
    found = f"the class {value.__name__}" if isinstance(value, type) else f"a {type(value).__name__}"
    raise ImportFromStringError(
        f"KTC_MODEL={model!r} is {found}: give a build_model(hp) function, a keras_tuner.HyperModel "
        f"instance or a HyperModel subclass (or {NO_MODEL} with a KTC_TUNER class whose run_trial needs no "
        "model)", "KTC_MODEL")


def overrides_fit(hypermodel) -> bool:
    """Whether `hypermodel` trains with its own `fit` (KerasTuner guide "Tune model training"):
    its metrics and hyperparameters may then be known only once a trial ran."""
    import keras_tuner as kt

    return hypermodel is not None and type(hypermodel).fit is not kt.HyperModel.fit


__all__ = ["ImportFromStringError", "as_hypermodel", "guide_build_model", "overrides_fit", "resolve"]

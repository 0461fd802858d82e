"""The model to tune: the user's `build_model(hp)` or the KerasTuner guide's.

The default is the search space of the KerasTuner guide "Visualize the
hyperparameter tuning process": an MLP or a CNN (model_type, mlp_layers,
units_i, cnn_layers, filters_i, dropout), compiled for sparse categorical
cross-entropy with accuracy. It adapts to the dataset's input shape and class
count so the same space runs on MNIST (28x28, the guide's exact model) and on
scikit-learn's 8x8 digits (convolutions there use 'same' padding, since three
'valid' 3x3 conv + pool blocks cannot fit in 8x8).
"""

from __future__ import annotations

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


def resolve(model: str, dataset):
    """The `build_model(hp)` callable for KTC_MODEL (empty: the guide's, fitted to `dataset`)."""
    if not model:
        return guide_build_model(dataset.input_shape, dataset.num_classes)
    return import_from_string(model, "KTC_MODEL")


__all__ = ["ImportFromStringError", "guide_build_model", "resolve"]

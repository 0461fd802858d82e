"""A hypermodel whose trial cost does not depend on the sampled values (for scaling benchmarks)."""

import keras
from keras import layers


def fixed_cost(hp):
    """Same layers and sizes for every trial; only the optimizer's learning rate and the activation vary."""
    inputs = keras.Input((8, 8, 1))
    x = layers.Flatten()(inputs)
    activation = hp.Choice("activation", ["relu", "tanh"])
    x = layers.Dense(256, activation=activation)(x)
    x = layers.Dense(256, activation=activation)(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model

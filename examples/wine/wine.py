"""Bring-your-own-model example: tune an MLP on scikit-learn's wine data (offline).

Run it with the kit unchanged (see README.md in this folder):
    KTC_CODE_DIR=./examples/wine KTC_DATASET=wine:load_data KTC_MODEL=wine:build_model docker compose up --build
"""

import keras
import numpy as np
from keras import layers


def load_data():
    """Return (x_train, y_train), (x_val, y_val): what KTC_DATASET=module:function must return."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_wine(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    return (scaler.transform(x_train).astype(np.float32), y_train), (scaler.transform(x_val).astype(np.float32), y_val)


def build_model(hp):
    """A KerasTuner hypermodel: any function of `hp` returning a compiled Keras model."""
    inputs = keras.Input(shape=(13,))
    x = inputs
    for i in range(hp.Int("layers", 1, 2)):
        x = layers.Dense(hp.Choice(f"units_{i}", [16, 32, 64]), activation="relu")(x)
    x = layers.Dropout(hp.Float("dropout", 0.0, 0.4, step=0.2))(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 1e-1, sampling="log")),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model

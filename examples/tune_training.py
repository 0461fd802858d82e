"""KerasTuner guide "Tune model training": a HyperModel whose `fit` tunes training itself.

`build` draws the model's hyperparameters; `fit` draws `batch_size` and `shuffle` and trains.
ktcluster records both kinds alike: trials.csv, best_hyperparameters.json and TensorBoard's
HParams show `batch_size` and `shuffle` with the values each trial used.

    PYTHONPATH=examples KTC_DATASET=digits KTC_MODEL=tune_training:TuneTraining python -m chief
    PYTHONPATH=examples KTC_DATASET=digits KTC_MODEL=tune_training:TuneTraining python -m worker

KTC_MODEL may name the class (made with no arguments) or an instance (`tune_training:hypermodel`).
"""

import keras
import keras_tuner
from keras import layers


class TuneTraining(keras_tuner.HyperModel):
    def build(self, hp):
        model = keras.Sequential([
            layers.Input((8, 8, 1)),  # scikit-learn's digits (KTC_DATASET=digits)
            layers.Flatten(),
            layers.Dense(hp.Int("units", 16, 64, step=16), activation="relu"),
            layers.Dense(10, activation="softmax"),
        ])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(
            *args,
            batch_size=hp.Choice("batch_size", [16, 32, 64]),
            shuffle=hp.Boolean("shuffle"),
            **kwargs,
        )


hypermodel = TuneTraining()

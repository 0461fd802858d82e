"""Your own Tuner: a RandomSearch subclass whose `run_trial` tunes the batch size (the KerasTuner
idiom), with a plain `build_model(hp)`.

    PYTHONPATH=examples KTC_DATASET=digits KTC_TUNER=custom_tuner:BatchSizeTuner \
        KTC_MODEL=custom_tuner:build_model python -m chief      # and python -m worker

The chief runs RandomSearch's oracle; each worker runs this class, combined with ktcluster's
own tuner (leases, heartbeats, TensorBoard), so `super().run_trial` builds, trains and
checkpoints as KerasTuner does. `batch_size` shows in trials.csv and HParams like any other
hyperparameter.
"""

import keras
import keras_tuner
from keras import layers


class BatchSizeTuner(keras_tuner.RandomSearch):
    def run_trial(self, trial, *args, **kwargs):
        kwargs["batch_size"] = trial.hyperparameters.Int("batch_size", 16, 64, step=16)
        return super().run_trial(trial, *args, **kwargs)


def build_model(hp):
    model = keras.Sequential([
        layers.Input((8, 8, 1)),
        layers.Flatten(),
        layers.Dense(hp.Int("units", 16, 64, step=16), activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model

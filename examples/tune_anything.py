"""KerasTuner guide "Tune anything": a `run_trial` that returns a number, with no Keras model.

    PYTHONPATH=examples KTC_TUNER=tune_anything:TuneAnything KTC_MODEL=none \
        KTC_OBJECTIVE=score:min KTC_DATASET=digits python -m chief      # and python -m worker

The number is the objective (name it with KTC_OBJECTIVE and give its direction); a dict of
metrics works too (it must hold the objective). No model, so no best_model.keras: the chief's
final line says so. The workers still load KTC_DATASET and pass it to `run_trial` (unused here).
"""

import keras_tuner


class TuneAnything(keras_tuner.RandomSearch):
    def run_trial(self, trial, *args, **kwargs):
        hp = trial.hyperparameters
        x = hp.Float("x", -1.0, 1.0)
        return x * x + 1.0

"""The KerasTuner guide's model on scikit-learn digits (the default search's space, unchanged),
with two faults for the dashboard test:

- an MLP with 3 layers fails in `fit` (its loss raises), so the run has a failed trial;
- KTC_TEST_SLEEP (seconds per training batch, set on one worker only) slows that worker's
  trials, so the test can kill it mid-trial and the trial is retried elsewhere.
"""

import os
import time

import keras

from shared import hypermodels


def _refused_loss(y_true, y_pred):
    raise ValueError("test fault: 3-layer MLPs are refused")


def build_model(hp):
    model = hypermodels.guide_build_model((8, 8, 1), 10)(hp)
    values = hp.values  # read without `hp.get`: only what the guide's build asked for is "used"
    refused = values.get("model_type") == "mlp" and values.get("mlp_layers") == 3
    sleep = float(os.environ.get("KTC_TEST_SLEEP", "0"))
    if sleep:
        inputs = keras.Input((8, 8, 1))
        slow = keras.layers.Lambda(lambda t: (time.sleep(sleep), t)[1], output_shape=lambda s: s)(inputs)
        model = keras.Model(inputs, model(slow))
    if refused or sleep:
        model.compile(loss=_refused_loss if refused else "sparse_categorical_crossentropy", metrics=["accuracy"],
                      optimizer="adam", run_eagerly=bool(sleep))
    return model

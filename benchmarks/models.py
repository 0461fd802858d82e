"""Hypermodels for the benchmarks (KTC_MODEL=benchmarks.models:fixed_cost).

`fixed_cost`: a trial's cost does not depend on the sampled values (same layers and sizes every
trial), so 1-worker and 2-worker runs, and ktcluster and Optuna, do the same work.
`fixed_cost_timed`: the same model; when BENCH_FIT_LOG names a file, every `fit` appends one JSON
line there: {"start", "end" (time.time()), "rss_kib" (VmRSS right after fit)}. Only the process
that trains (the worker) is given the variable.
"""

import json
import os
import time

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


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


def fixed_cost_timed(hp):
    model = fixed_cost(hp)
    path = os.environ.get("BENCH_FIT_LOG")
    if path:
        real_fit = model.fit

        def fit(*args, **kwargs):
            start = time.time()
            try:
                return real_fit(*args, **kwargs)
            finally:
                record = {"start": start, "end": time.time(), "rss_kib": rss_kib()}
                with open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")

        model.fit = fit
    return model

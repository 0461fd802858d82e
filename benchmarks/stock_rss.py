"""`python -m benchmarks.stock_rss`: stock KerasTuner alone, one process, no ktcluster.

RSS after 1, 10 and 50 one-epoch trials of the overhead benchmark's model and data: the baseline
that shows the worker's memory growth comes from KerasTuner/Keras/TensorFlow, not from ktcluster.
"""

import tempfile
import time

import keras
import keras_tuner as kt
import tensorflow as tf

from benchmarks.models import fixed_cost
from shared import data


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1024


def main(trials: int = 50) -> None:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ds = data.load("digits", "")
    rss = []

    class Measured(kt.RandomSearch):
        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            rss.append(rss_mib())

    with tempfile.TemporaryDirectory() as tmp:
        tuner = Measured(fixed_cost, objective="val_accuracy", max_trials=trials, directory=tmp, project_name="p",
                         seed=1)
        started = time.monotonic()
        tuner.search(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val), epochs=1, verbose=0,
                     callbacks=[keras.callbacks.TensorBoard(f"{tmp}/logs")])
        seconds = time.monotonic() - started
    print(f"stock KerasTuner RSS MiB after 1/10/{trials} trials: {rss[0]:.0f} / {rss[9]:.0f} / {rss[-1]:.0f} "
          f"(growth {rss[-1] / rss[0] - 1:+.0%}); {seconds / trials:.2f} s per trial")


if __name__ == "__main__":
    main()

"""`python -m benchmarks.stock_rss TRIALS FIT_LOG`: stock KerasTuner alone, one process, no ktcluster.

The baseline for the worker-overhead benchmark: `kt.RandomSearch` on the same model
(benchmarks.models:fixed_cost_timed, which logs every fit to FIT_LOG), the same data (digits), one
epoch per trial, a TensorBoard callback, one TensorFlow thread, as a ktcluster worker trains. Time
outside fit and RSS per trial are then computed from FIT_LOG exactly as for the ktcluster worker.
"""

import os
import sys
import tempfile


def main(trials: int, fit_log: str) -> None:
    os.environ["BENCH_FIT_LOG"] = fit_log
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        os.environ.pop(name, None)  # one process, no chief
    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from benchmarks.models import fixed_cost_timed
    from shared import data

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ds = data.load("digits", "")
    with tempfile.TemporaryDirectory() as tmp:
        tuner = kt.RandomSearch(fixed_cost_timed, objective="val_accuracy", max_trials=trials, directory=tmp,
                                project_name="p", seed=1)
        tuner.search(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val), epochs=1, verbose=0,
                     callbacks=[keras.callbacks.TensorBoard(f"{tmp}/logs")])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])

"""`python -m benchmarks.plain TRIALS EPOCHS [FIT_LOG]`: the same training with no tuner at all.

Builds and fits benchmarks.models:fixed_cost TRIALS times on digits, one TensorFlow thread, with
what every ktcluster worker does around a trial and nothing else: Keras's `clear_session()` before
each build, the start-up heap frozen out of the garbage collector, and the trial's traced
gradients released after it (worker.runner). Prints one JSON line {"first_start", "last_end"}
(time.time()).
- Two of these side by side versus one doing all the trials is the best 1 -> 2 scaling this
  machine allows, whatever coordinates the trials (the scaling benchmark).
- With FIT_LOG, every fit is logged there (benchmarks.models:fixed_cost_timed) with a TensorBoard
  callback, as in the worker-overhead benchmark: its time outside `fit` is the floor any tuner that
  trains a fresh Keras model per trial pays here.
"""

import gc
import json
import os
import sys
import tempfile
import time


def main(trials: int, epochs: int, fit_log: str = "") -> None:
    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from benchmarks.models import fixed_cost, fixed_cost_timed
    from shared import data
    from worker.runner import gradient_names, release_traced_gradients

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ds = data.load("digits", "")
    if fit_log:
        os.environ["BENCH_FIT_LOG"] = fit_log
    build = fixed_cost_timed if fit_log else fixed_cost
    with tempfile.TemporaryDirectory() as logs:
        callbacks = [keras.callbacks.TensorBoard(logs)] if fit_log else []
        gc.freeze()
        first = time.time()
        for _ in range(trials):
            keras.backend.clear_session()
            before = gradient_names()
            model = build(kt.HyperParameters())
            model.fit(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val), epochs=epochs, verbose=0,
                      callbacks=callbacks)
            release_traced_gradients(before)
        print(json.dumps({"first_start": first, "last_end": time.time()}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:])

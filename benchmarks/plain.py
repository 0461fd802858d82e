"""`python -m benchmarks.plain TRIALS EPOCHS`: the hardware ceiling for the scaling benchmark.

The scaling benchmark's work with no tuner at all: build and fit benchmarks.models:fixed_cost
TRIALS times on digits, one TensorFlow thread, then print one JSON line {"first_start",
"last_end"} (time.time()). Two of these side by side versus one doing all the trials is the best
1 -> 2 scaling this machine allows, whatever coordinates the trials.
"""

import json
import sys
import time


def main(trials: int, epochs: int) -> None:
    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from benchmarks.models import fixed_cost
    from shared import data

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ds = data.load("digits", "")
    first = time.time()
    for _ in range(trials):
        keras.backend.clear_session()
        model = fixed_cost(kt.HyperParameters())
        model.fit(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val), epochs=epochs, verbose=0)
    print(json.dumps({"first_start": first, "last_end": time.time()}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))

"""`python -m benchmarks.ray_run WORKERS TRIALS EPOCHS`: the Optuna benchmark's search, run by Ray Tune.

The same model (benchmarks.models:fixed_cost, given KerasTuner's own HyperParameters holding
Ray's sampled values, which its `hp.Choice`/`hp.Float` calls return), the same data (digits), one
TensorFlow thread per trial, WORKERS trials at a time on a local Ray cluster of WORKERS CPUs,
trial processes reused between trials (Ray's advice for trainables with costly imports). Prints
one JSON line {"first_start", "last_end", "trials"} (time.time()).
"""

import json
import sys
import tempfile


def trainable(config):
    import time

    import keras
    import keras_tuner as kt
    import tensorflow as tf

    from benchmarks.models import fixed_cost
    from shared import data

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    started = time.time()
    ds = data.load("digits", "")
    keras.backend.clear_session()
    hp = kt.HyperParameters()
    hp.values.update(activation=config["activation"], learning_rate=config["learning_rate"])
    model = fixed_cost(hp)
    history = model.fit(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val),
                        epochs=config["epochs"], verbose=0)
    return {"val_accuracy": max(history.history["val_accuracy"]), "started": started, "ended": time.time()}


def main(workers: int, trials: int, epochs: int) -> None:
    import os

    import ray
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    space = {"activation": tune.choice(["relu", "tanh"]), "learning_rate": tune.loguniform(1e-4, 1e-2),
             "epochs": epochs}
    with tempfile.TemporaryDirectory() as tmp:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=workers, metric="val_accuracy",
                                        mode="max", reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tmp, verbose=0),
        )
        results = tuner.fit()
    metrics = [r.metrics for r in results if r.error is None]
    ray.shutdown()
    print(json.dumps({"first_start": min(m["started"] for m in metrics), "last_end": max(m["ended"] for m in metrics),
                      "trials": len(metrics)}), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))

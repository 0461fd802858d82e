"""`python -m benchmarks.optuna_worker JOURNAL TRIALS EPOCHS`: one Optuna worker process.

The same model (benchmarks.models:fixed_cost, through a small adapter from Optuna's trial to the
two KerasTuner calls it makes), the same data (digits) and one TensorFlow thread, as the ktcluster
workers; the study lives in Optuna's JournalStorage file, which every worker process shares.
"""

import sys


class HP:
    """The KerasTuner `hp` calls fixed_cost makes, answered by an Optuna trial."""

    def __init__(self, trial):
        self.trial = trial

    def Choice(self, name, values):
        return self.trial.suggest_categorical(name, values)

    def Float(self, name, low, high, sampling=None):
        return self.trial.suggest_float(name, low, high, log=sampling == "log")


def main(journal: str, trials: int, epochs: int) -> None:
    import keras
    import optuna
    import tensorflow as tf

    from benchmarks.models import fixed_cost
    from shared import data

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ds = data.load("digits", "")

    def objective(trial):
        keras.backend.clear_session()
        model = fixed_cost(HP(trial))
        history = model.fit(ds.x_train, ds.y_train, validation_data=(ds.x_val, ds.y_val), epochs=epochs, verbose=0)
        return max(history.history["val_accuracy"])

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    study = optuna.load_study(study_name="bench", storage=storage)
    study.optimize(objective, n_trials=trials)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))

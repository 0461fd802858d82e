"""Your own Keras callbacks for every trial: KTC_CALLBACKS=callbacks:callbacks.

The function is called for every trial attempt, so each gets fresh callbacks; they run beside
ktcluster's own (TensorBoard, the attempt guard). A trial that EarlyStopping ends early is a
COMPLETED trial, scored on the epochs it ran.

    PYTHONPATH=examples KTC_DATASET=digits KTC_CALLBACKS=callbacks:callbacks python -m chief
    PYTHONPATH=examples KTC_DATASET=digits KTC_CALLBACKS=callbacks:callbacks python -m worker
"""

import keras


def callbacks():
    return [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=2),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1),
    ]

"""A Keras callback that ends an attempt early: when it was taken away, or before a checkpoint
write that cannot fit on the state disk.

Why a space check and not just the write's error: h5py does not raise when the disk fills
during a write. The failure surfaces in its object finalisers ("Exception ignored in
h5py._objects.ObjectID.__dealloc__: file write failed ... No space left on device") and the
process later dies with SIGSEGV (reproduced with Keras 3 `save_weights` on a full tmpfs). So the
worker refuses a checkpoint that cannot fit, with an OSError(ENOSPC) KerasTuner turns into an
INVALID trial (retried elsewhere by the chief), instead of handing h5py a full disk. An error
h5py does raise (EIO at open, a path that is a folder) takes the same way on its own.
"""

from __future__ import annotations

import errno
import os

import keras
import numpy as np

# Bytes per variable and per file of HDF5 structure around the raw values (measured on Keras 3
# weights files: 26 KB for 7 KB of values in 14 variables), with headroom.
PER_VARIABLE, PER_FILE = 4096, 64 * 1024


class CheckpointSpaceError(OSError):
    """Not enough space for a checkpoint: errno ENOSPC, one-line message naming the folder."""


def checkpoint_bytes(model) -> int:
    """An upper estimate of the size of `model.save_weights()` (weights and optimizer state)."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    variables += list(getattr(optimizer, "variables", None) or [])
    raw = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)
    return int(raw * 1.1) + PER_VARIABLE * len(variables) + PER_FILE


def check_space(path: str, needed: int) -> None:
    """Raise CheckpointSpaceError unless `needed` bytes fit at `path` (an existing file there
    is overwritten, so its size counts as free)."""
    folder = os.path.dirname(path)
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    try:
        free += os.path.getsize(path)
    except OSError:
        pass
    if free < needed:
        raise CheckpointSpaceError(
            errno.ENOSPC, f"No space left on device for the checkpoint: needs about {needed // 1024} KiB, "
            f"{free // 1024} KiB free in {folder}")


class AttemptGuard(keras.callbacks.Callback):
    """Stops `fit` by raising `lost_error(trial_id)` at the first batch or epoch end after
    `is_lost(trial_id)` turns True, and raises CheckpointSpaceError at an epoch end when the
    checkpoint at `checkpoint_path` could not be written.

    It must run before KerasTuner's checkpoint callback in the same epoch end (KerasTuner appends
    that one last), so that neither case writes a checkpoint. Shared, not copied, by
    `copy.deepcopy` (KerasTuner copies the callbacks for every execution).
    """

    def __init__(self, trial_id: str, is_lost, lost_error, checkpoint_path: str):
        super().__init__()
        self.trial_id, self.is_lost, self.lost_error = trial_id, is_lost, lost_error
        self.checkpoint_path = checkpoint_path

    def __deepcopy__(self, memo):
        return self

    def _stop_if_lost(self):
        if self.is_lost(self.trial_id):
            self.model.stop_training = True
            raise self.lost_error(f"trial {self.trial_id}: attempt taken away; training stopped")

    def on_train_batch_end(self, batch, logs=None):
        self._stop_if_lost()

    def on_test_batch_end(self, batch, logs=None):
        self._stop_if_lost()

    def on_epoch_end(self, epoch, logs=None):
        self._stop_if_lost()
        check_space(self.checkpoint_path, checkpoint_bytes(self.model))

"""Which device a process trains on.

Compose cannot give each replica its own GPU (`count: 1` puts every replica on
GPU 0), so the GPU override shows every GPU to every worker and each worker
picks one itself: the explicit KTC_GPU_MAP entry for its id, else
`(replica - 1) mod visible GPUs`, so replicas 1..N land on distinct GPUs while
there are enough. The chief trains nothing and hides all GPUs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Sequence

log = logging.getLogger("ktcluster.devices")


@dataclasses.dataclass(frozen=True)
class Choice:
    index: int | None  # index into the visible GPU list; None = CPU
    reason: str


def choose_gpu(tuner_id: str, replica: int | None, gpu_count: int, gpu_map: Mapping[str, int]) -> Choice:
    """Pure selection logic (unit-tested with fake device counts)."""
    if tuner_id in gpu_map:
        index = gpu_map[tuner_id]
        if index >= gpu_count:
            raise ValueError(
                f"KTC_GPU_MAP pins {tuner_id} to GPU {index}, but only {gpu_count} GPU(s) are visible"
            )
        return Choice(index, f"KTC_GPU_MAP pins {tuner_id}")
    if gpu_count == 0:
        return Choice(None, "no GPU visible")
    if replica is None:
        return Choice(0, "no replica number; first visible GPU")
    index = (replica - 1) % gpu_count
    shared = " (shared: more workers than GPUs)" if replica > gpu_count else ""
    return Choice(index, f"replica {replica} of {gpu_count} visible GPU(s){shared}")


def hide_gpus() -> None:
    """For processes that must not touch a GPU (the chief, TensorBoard helpers)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"


def configure_tensorflow(tf_threads: int) -> None:
    """Thread limits must be set before TensorFlow runs its first op."""
    import tensorflow as tf

    if tf_threads:
        tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(tf_threads)


def use_device(tuner_id: str, replica: int | None, gpu_map: Mapping[str, int], gpus: Sequence | None = None) -> str:
    """Restrict TensorFlow to the chosen GPU (with memory growth) and describe it."""
    import tensorflow as tf

    gpus = list(tf.config.list_physical_devices("GPU") if gpus is None else gpus)
    choice = choose_gpu(tuner_id, replica, len(gpus), gpu_map)
    if choice.index is None:
        tf.config.set_visible_devices([], "GPU")
        description = "CPU"
    else:
        gpu = gpus[choice.index]
        tf.config.set_visible_devices([gpu], "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
        details = tf.config.experimental.get_device_details(gpu)
        description = f"GPU:{choice.index} {details.get('device_name', gpu.name)}"
    log.info("%s trains on %s (%s)", tuner_id, description, choice.reason)
    return description

"""Which device a process trains on.

Compose cannot give each replica its own GPU (`count: 1` puts every replica on
GPU 0), so the GPU override shows every GPU to every worker and each worker
picks one itself: the explicit KTC_GPU_MAP entry for its id, else
`(replica - 1) mod visible GPUs`, so replicas 1..N land on distinct GPUs while
there are enough. The chief trains nothing and hides all GPUs.

Swarm can: a task that reserves a generic resource of kind `GPU` gets its own
GPU in `DOCKER_RESOURCE_GPU` (a UUID or an index, as the node declared it). The
worker then trains on exactly that GPU: unless the container already sees only
it (NVIDIA_VISIBLE_DEVICES or CUDA_VISIBLE_DEVICES is that one value, or the
only /dev/nvidiaN node is that index), it sets CUDA_VISIBLE_DEVICES to it
before TensorFlow lists GPUs. Such a resource wins over KTC_GPU_MAP.

Kubernetes can too: a pod's `nvidia.com/gpu` GPUs are its own (the device plugin shows it only
those), so a worker in a pod that sees one GPU takes it, whatever its index.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import re
from typing import Mapping, MutableMapping, Sequence

log = logging.getLogger("ktcluster.devices")

#: where Swarm puts a task's generic resources: DOCKER_RESOURCE_<KIND>; `GPU` is the kind the
#: stack reserves, `NVIDIA-GPU` the one NVIDIA's and Docker's guides declare
SWARM_GPU_VARIABLES = ("DOCKER_RESOURCE_GPU", "DOCKER_RESOURCE_NVIDIA-GPU")


@dataclasses.dataclass(frozen=True)
class Choice:
    index: int | None  # index into the visible GPU list; None = CPU
    reason: str


def choose_gpu(tuner_id: str, replica: int | None, gpu_count: int, gpu_map: Mapping[str, int],
               allocated_by: str = "") -> Choice:
    """Pure selection logic (unit-tested with fake device counts). `allocated_by` names the
    engine that gives each container its GPUs (Kubernetes' device plugin): a container that
    sees one GPU there takes it, and its replica number says nothing about sharing; one that
    sees several spreads by replica number as on Compose."""
    if tuner_id in gpu_map:
        index = gpu_map[tuner_id]
        if index >= gpu_count:
            raise ValueError(
                f"KTC_GPU_MAP pins {tuner_id} to GPU {index}, but only {gpu_count} GPU(s) are visible"
            )
        return Choice(index, f"KTC_GPU_MAP pins {tuner_id}")
    if gpu_count == 0:
        return Choice(None, "no GPU visible")
    if allocated_by and gpu_count == 1:
        return Choice(0, f"the one GPU this container sees ({allocated_by} allocates GPUs per container)")
    if replica is None:
        return Choice(0, "no replica number; first visible GPU")
    index = (replica - 1) % gpu_count
    shared = " (shared: more workers than GPUs)" if replica > gpu_count else ""
    return Choice(index, f"replica {replica} of {gpu_count} visible GPU(s){shared}")


@dataclasses.dataclass(frozen=True)
class SwarmGpu:
    """The GPU Swarm reserved for this task, and how this process narrows its view to it."""

    variable: str  # e.g. DOCKER_RESOURCE_GPU
    value: str  # a UUID (GPU-..., MIG-...) or an index, as the node declared it
    set_visible: str | None  # the CUDA_VISIBLE_DEVICES to set; None: the runtime narrowed already

    @property
    def given(self) -> str:
        return f"{self.variable}={self.value}"


def swarm_gpu(env: Mapping[str, str], device_nodes: Sequence[int] = ()) -> SwarmGpu | None:
    """The GPU Swarm gave this task, or None when it gave none.

    `device_nodes`: the N of each /dev/nvidiaN in the container (the NVIDIA runtime keeps the
    host's numbers). The view is already narrowed when NVIDIA_VISIBLE_DEVICES or
    CUDA_VISIBLE_DEVICES is exactly the value, or the value is an index and /dev/nvidia<index>
    is the only GPU node; otherwise CUDA_VISIBLE_DEVICES must be set to the value (CUDA takes
    UUIDs and indexes). Raises ValueError (naming the variable) when it names several GPUs or
    is not a UUID or an index: a worker trains on one GPU.
    """
    found = [(name, env[name].strip()) for name in SWARM_GPU_VARIABLES if env.get(name, "").strip()]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"both {found[0][0]} and {found[1][0]} are set: reserve GPUs of one kind")
    variable, value = found[0]
    values = [v.strip() for v in value.split(",") if v.strip()]
    if len(values) != 1:
        raise ValueError(f"{variable}={value} names {len(values)} GPUs; a worker trains on one: "
                         "reserve exactly 1 (generic_resources: kind GPU, value 1)")
    (value,) = values
    if not re.fullmatch(r"\d+|[A-Za-z][A-Za-z0-9_.:/-]*", value):
        raise ValueError(f"{variable}={value!r}: expected a GPU UUID (GPU-...) or an index")
    narrowed = value in (env.get("NVIDIA_VISIBLE_DEVICES", "").strip(), env.get("CUDA_VISIBLE_DEVICES", "").strip())
    if value.isdigit() and list(device_nodes) == [int(value)]:
        narrowed = True
    return SwarmGpu(variable, value, None if narrowed else value)


def choose_given_gpu(given: SwarmGpu, gpu_count: int, nvidia_runtime: bool) -> Choice:
    """Which visible GPU to train on once the view is narrowed to `given` (pure; unit-tested).

    One visible GPU: that one. None visible: an error when the NVIDIA runtime is present (the value
    matched no GPU: declare GPUs by UUID), else CPU with a warning reason (no NVIDIA runtime, or
    fake resources as in the tests). More than one: an error (the narrowing did not happen).
    """
    if gpu_count == 1:
        return Choice(0, f"Swarm gave {given.given}")
    if gpu_count == 0 and not nvidia_runtime:
        return Choice(None, f"Swarm gave {given.given}, but no GPU is visible: is the NVIDIA "
                            "runtime the default runtime on this node?")
    raise ValueError(f"{given.given}: TensorFlow sees {gpu_count} GPUs after narrowing to it, expected 1; "
                     "declare the node's GPUs by UUID in node-generic-resources")


def kubernetes_allocated(env: Mapping[str, str]) -> str:
    """"Kubernetes" in a pod (its GPUs come from the device plugin, one container's alone: the
    `nvidia.com/gpu` limit of deploy/kubernetes/gpu), else ""."""
    return "Kubernetes" if env.get("KUBERNETES_SERVICE_HOST") else ""


def _device_nodes() -> list[int]:
    return sorted(int(m[1]) for path in glob.glob("/dev/nvidia[0-9]*")
                  if (m := re.fullmatch(r"/dev/nvidia(\d+)", path)))


def hide_gpus() -> None:
    """For processes that must not touch a GPU (the chief, TensorBoard helpers)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"


def configure_tensorflow(tf_threads: int) -> None:
    """Thread limits must be set before TensorFlow runs its first op."""
    import tensorflow as tf

    if tf_threads:
        tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
        tf.config.threading.set_inter_op_parallelism_threads(tf_threads)


def use_device(tuner_id: str, replica: int | None, gpu_map: Mapping[str, int], gpus: Sequence | None = None,
               env: MutableMapping[str, str] | None = None) -> str:
    """Restrict TensorFlow to the chosen GPU (with memory growth) and describe it.

    A Swarm GPU (see `swarm_gpu`) is applied to `env` (os.environ by default) before TensorFlow
    lists GPUs, so call this before anything else touches a GPU. Raises ValueError for a GPU
    setting that cannot hold.
    """
    import tensorflow as tf

    env = os.environ if env is None else env
    nodes = _device_nodes()
    given = swarm_gpu(env, nodes)
    if given is not None and given.set_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = given.set_visible
    gpus = list(tf.config.list_physical_devices("GPU") if gpus is None else gpus)
    if given is not None:
        choice = choose_given_gpu(given, len(gpus), nvidia_runtime=bool(nodes))
        if tuner_id in gpu_map:
            log.warning("%s: KTC_GPU_MAP is ignored: %s", tuner_id, choice.reason)
        if choice.index is None:
            log.warning("%s: %s", tuner_id, choice.reason)
    else:
        choice = choose_gpu(tuner_id, replica, len(gpus), gpu_map, allocated_by=kubernetes_allocated(env))
    if choice.index is None:
        tf.config.set_visible_devices([], "GPU")
        description = "CPU"
    else:
        gpu = gpus[choice.index]
        tf.config.set_visible_devices([gpu], "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
        details = tf.config.experimental.get_device_details(gpu)
        description = f"GPU:{choice.index} {details.get('device_name', gpu.name)}"
    if given is not None:
        description += f" [CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')}]"
    log.info("%s trains on %s (%s)", tuner_id, description, choice.reason)
    return description

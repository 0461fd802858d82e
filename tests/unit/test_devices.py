import pytest

from shared.devices import choose_gpu


@pytest.mark.parametrize("replica,count,index", [
    (1, 4, 0), (2, 4, 1), (4, 4, 3), (5, 4, 0), (3, 2, 0), (1, 1, 0), (7, 1, 0),
])
def test_replicas_spread_over_visible_gpus(replica, count, index):
    assert choose_gpu(f"worker-{replica}", replica, count, {}).index == index


def test_distinct_gpus_while_there_are_enough():
    chosen = [choose_gpu(f"worker-{r}", r, 4, {}).index for r in range(1, 5)]
    assert sorted(chosen) == [0, 1, 2, 3]


def test_sharing_is_reported():
    assert "shared" in choose_gpu("worker-3", 3, 2, {}).reason
    assert "shared" not in choose_gpu("worker-2", 2, 2, {}).reason


def test_a_pod_takes_the_gpu_kubernetes_allocated_it_whatever_its_index():
    """deploy/kubernetes/gpu gives each worker pod one GPU of its own: worker-3 sees one GPU, and
    that is not sharing."""
    for replica in (1, 3, 8):
        choice = choose_gpu(f"worker-{replica}", replica, 1, {}, allocated_by="Kubernetes")
        assert choice.index == 0 and "shared" not in choice.reason and "Kubernetes allocates" in choice.reason
    assert choose_gpu("worker-3", 3, 0, {}, allocated_by="Kubernetes").index is None
    assert choose_gpu("worker-3", 3, 2, {}, allocated_by="Kubernetes").index == 0  # sees several: by replica
    assert choose_gpu("worker-3", 3, 2, {"worker-3": 1}, allocated_by="Kubernetes").index == 1  # the map still wins


def test_kubernetes_is_recognised_by_its_service_variables():
    from shared.devices import kubernetes_allocated

    assert kubernetes_allocated({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) == "Kubernetes"
    assert kubernetes_allocated({}) == "" and kubernetes_allocated({"KUBERNETES_SERVICE_HOST": ""}) == ""


def test_no_gpu_means_cpu():
    choice = choose_gpu("worker-1", 1, 0, {})
    assert choice.index is None and "no GPU" in choice.reason


def test_explicit_map_wins():
    assert choose_gpu("worker-1", 1, 4, {"worker-1": 3}).index == 3
    assert choose_gpu("box-a", None, 2, {"box-a": 1}).index == 1


def test_map_beyond_visible_gpus_is_an_error():
    with pytest.raises(ValueError, match="KTC_GPU_MAP pins worker-1 to GPU 2, but only 2 GPU"):
        choose_gpu("worker-1", 1, 2, {"worker-1": 2})


def test_no_replica_number_takes_first_gpu():
    assert choose_gpu("box-a", None, 3, {}).index == 0


def test_use_device_falls_back_to_cpu_here():
    """This machine has no GPU: TensorFlow lists none, and the worker trains on the CPU."""
    import tensorflow as tf

    from shared.devices import use_device

    assert tf.config.list_physical_devices("GPU") == []
    assert use_device("worker-1", 1, {}, env={}) == "CPU"


# -- a GPU Swarm reserved for the task (generic resource of kind GPU) --------------------------

from shared import devices  # noqa: E402

UUID = "GPU-7af7a99b-1c2d-3e4f-5a6b-7c8d9e0f1a2b"


def test_no_swarm_resource_means_the_replica_rule():
    assert devices.swarm_gpu({}) is None and devices.swarm_gpu({"DOCKER_RESOURCE_GPU": " "}) is None


@pytest.mark.parametrize("env,nodes,set_visible", [
    ({"DOCKER_RESOURCE_GPU": UUID}, [], UUID),  # every GPU visible: narrow to the UUID
    ({"DOCKER_RESOURCE_GPU": "2"}, [0, 1, 2, 3], "2"),  # every GPU visible: narrow to the index
    ({"DOCKER_RESOURCE_NVIDIA-GPU": UUID}, [], UUID),  # the kind NVIDIA's guides declare
    ({"DOCKER_RESOURCE_GPU": UUID, "NVIDIA_VISIBLE_DEVICES": UUID}, [3], None),  # runtime narrowed
    ({"DOCKER_RESOURCE_GPU": "1", "CUDA_VISIBLE_DEVICES": "1"}, [0, 1], None),  # already set
    ({"DOCKER_RESOURCE_GPU": "2"}, [2], None),  # the only device node is that GPU: narrowed
    ({"DOCKER_RESOURCE_GPU": "2", "NVIDIA_VISIBLE_DEVICES": "all"}, [0, 1, 2], "2"),
    ({"DOCKER_RESOURCE_GPU": UUID, "CUDA_VISIBLE_DEVICES": "0"}, [], UUID),  # another value: ours wins
])
def test_swarm_gpu_narrows_the_view_to_exactly_the_given_gpu(env, nodes, set_visible):
    given = devices.swarm_gpu(env, nodes)
    assert given.value == env.get("DOCKER_RESOURCE_GPU", env.get("DOCKER_RESOURCE_NVIDIA-GPU"))
    assert given.set_visible == set_visible


@pytest.mark.parametrize("env,message", [
    ({"DOCKER_RESOURCE_GPU": f"{UUID},GPU-other"}, "DOCKER_RESOURCE_GPU=.* names 2 GPUs; a worker trains on one"),
    ({"DOCKER_RESOURCE_GPU": "0", "DOCKER_RESOURCE_NVIDIA-GPU": "1"}, "both DOCKER_RESOURCE_GPU and"),
    ({"DOCKER_RESOURCE_GPU": "-1"}, "expected a GPU UUID"),
])
def test_swarm_gpu_bad_values_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        devices.swarm_gpu(env)


def test_given_gpu_is_the_one_visible_gpu():
    choice = devices.choose_given_gpu(devices.swarm_gpu({"DOCKER_RESOURCE_GPU": UUID}), 1, nvidia_runtime=True)
    assert choice.index == 0 and UUID in choice.reason


def test_given_gpu_without_nvidia_runtime_trains_on_cpu_and_says_why():
    given = devices.swarm_gpu({"DOCKER_RESOURCE_GPU": "fake-gpu-1"})
    choice = devices.choose_given_gpu(given, 0, nvidia_runtime=False)
    assert choice.index is None and "DOCKER_RESOURCE_GPU=fake-gpu-1" in choice.reason
    assert "default runtime" in choice.reason


@pytest.mark.parametrize("count", [0, 2])
def test_given_gpu_that_matches_no_single_visible_gpu_is_an_error(count):
    with pytest.raises(ValueError, match="DOCKER_RESOURCE_GPU=7: TensorFlow sees"):
        devices.choose_given_gpu(devices.swarm_gpu({"DOCKER_RESOURCE_GPU": "7"}), count, nvidia_runtime=True)


def test_use_device_sets_cuda_visible_devices_to_the_given_gpu():
    from shared.devices import use_device

    env = {"DOCKER_RESOURCE_GPU": "fake-gpu-1"}
    description = use_device("worker-2", 2, {"worker-2": 0}, gpus=[], env=env)
    assert env["CUDA_VISIBLE_DEVICES"] == "fake-gpu-1"
    assert description == "CPU [CUDA_VISIBLE_DEVICES=fake-gpu-1]"

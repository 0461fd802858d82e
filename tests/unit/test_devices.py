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
    from shared.devices import use_device

    assert use_device("worker-1", 1, {}, gpus=[]) == "CPU"

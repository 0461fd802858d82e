import keras_tuner as kt
import pytest

from shared import hypermodels, tuning

GUIDE_SPACE = {"model_type", "mlp_layers", "units_0", "units_1", "units_2", "dropout",
               "cnn_layers", "filters_0", "filters_1", "filters_2"}


@pytest.fixture(scope="module")
def guide():
    return hypermodels.guide_build_model((8, 8, 1), 10)


def test_explores_plain_if_branches_of_the_guide_model(guide):
    space = tuning.explore_space(guide)
    assert {hp.name for hp in space.space} == GUIDE_SPACE
    assert space.values["model_type"] == "mlp"  # defaults, not the last explored values


def test_exploring_a_resumed_space_is_stable(guide):
    """A restarted chief explores from the oracle's saved space (values unknown)."""
    first = tuning.explore_space(guide)
    saved = kt.HyperParameters.from_config(first.get_config())
    saved.values = {}
    again = tuning.explore_space(guide, saved)
    assert [hp.name for hp in again.space] == [hp.name for hp in first.space]


def test_default_build_failure_raises():
    def broken(hp):
        hp.Int("x", 1, 3)
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        tuning.explore_space(broken)


def test_discrete_values():
    hp = kt.HyperParameters()
    hp.Int("small", 32, 128, step=32)
    hp.Int("big", 1, 1000)
    hp.Float("lr", 1e-4, 1e-1)
    hp.Boolean("flag")
    hp.Choice("kind", ["a", "b"])
    got = {h.name: tuning.discrete_values(h) for h in hp.space}
    assert got == {"small": [32, 64, 96, 128], "big": None, "lr": None, "flag": [False, True], "kind": ["a", "b"]}


def test_recording_used_sees_only_the_branch_taken(guide):
    space = tuning.explore_space(guide)
    hp = space.copy()
    hp.values = {**space.values, "model_type": "mlp", "mlp_layers": 2}
    with tuning.recording_used(hp) as used:
        guide(hp)
    assert used == {"model_type", "mlp_layers", "units_0", "units_1", "dropout"}
    assert not hasattr(hp, "__dict__") or "_retrieve" not in vars(hp)  # unwrapped afterwards

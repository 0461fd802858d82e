"""The user-code shapes KTC_MODEL, KTC_TUNER and KTC_CALLBACKS take (issue #22), and what each
refuses with one line naming the setting; the worker's Tuner class keeps ClusterTuner outermost;
a trial's whole attempt (build, fit, run_trial) is recorded; the chief's HParams config declares
what the trials bring."""

import sys

import keras
import keras_tuner as kt
import pytest

from shared import config, hparams, hypermodels, tuning
from shared.config import ConfigError

USER_CODE = '''
import keras
import keras_tuner


def build_model(hp):
    hp.Int("units", 4, 8)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])


class Training(keras_tuner.HyperModel):
    def build(self, hp):
        return build_model(hp)

    def fit(self, hp, model, *args, **kwargs):
        return {"val_accuracy": float(hp.Choice("batch_size", [16, 32]))}


instance = Training()


class NeedsArguments(keras_tuner.HyperModel):
    def __init__(self, size):
        super().__init__()


class Search(keras_tuner.RandomSearch):
    pass


class Anything(keras_tuner.RandomSearch):
    def run_trial(self, trial, *args, **kwargs):
        return trial.hyperparameters.Float("x", -1.0, 1.0)


class Bands(keras_tuner.Hyperband):
    pass


class Own(keras_tuner.Tuner):
    ktc_oracle = "bayesian"

    def run_trial(self, trial, *args, **kwargs):
        return 1.0


class Unnamed(keras_tuner.Tuner):
    def run_trial(self, trial, *args, **kwargs):
        return 1.0


def compiled(hp):
    hp.Int("units", 4, 8)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


class OwnScore(keras_tuner.HyperModel):
    def build(self, hp):
        return compiled(hp)

    def fit(self, hp, model, *args, **kwargs):
        return {"agreement": 1.0}


NUMBER = 3


def good_callbacks():
    return [keras.callbacks.EarlyStopping(patience=1)]


def bad_callbacks():
    return keras.callbacks.EarlyStopping(patience=1)


def raising_callbacks():
    raise RuntimeError("no callbacks today")
'''


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "user_code.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_code", None)
    yield
    sys.modules.pop("user_code", None)


def _settings(**values):
    return config.load({**values}, role="status")


@pytest.mark.parametrize("name,kind", [("build_model", "FunctionHyperModel"), ("instance", "Training"),
                                       ("Training", "Training")])
def test_ktc_model_takes_what_a_keras_tuner_tuner_takes(user, name, kind):
    hypermodel = hypermodels.resolve(f"user_code:{name}", None)
    assert isinstance(hypermodel, kt.HyperModel) and type(hypermodel).__name__ == kind
    hp = kt.HyperParameters()
    assert isinstance(hypermodel.build(hp), keras.Model) and [h.name for h in hp.space] == ["units"]
    assert hypermodels.overrides_fit(hypermodel) == (kind == "Training")


def test_ktc_model_none_is_no_model_and_empty_is_the_guides(user):
    assert hypermodels.resolve("none", None) is None
    assert config.load({"KTC_MODEL": "none"}, role="status").model == "none"


@pytest.mark.parametrize("value,line", [
    ("user_code:NUMBER", "KTC_MODEL='user_code:NUMBER' is a int: give a build_model(hp) function, a "
                         "keras_tuner.HyperModel instance or a HyperModel subclass"),
    ("user_code:Search", "KTC_MODEL='user_code:Search' is the class Search: give a build_model(hp) function"),
    ("user_code:NeedsArguments", "KTC_MODEL='user_code:NeedsArguments': the HyperModel subclass NeedsArguments "
                                 "could not be made with no arguments (TypeError: "),
])
def test_a_ktc_model_of_no_accepted_shape_is_one_line(user, value, line):
    with pytest.raises(ConfigError) as err:
        hypermodels.resolve(value, None)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


@pytest.mark.parametrize("value,algorithm,own_trial", [
    ("random", "random", False), ("hyperband", "hyperband", False), ("user_code:Search", "random", False),
    ("user_code:Anything", "random", True), ("user_code:Bands", "hyperband", True),  # Hyperband's run_trial is its own
    ("user_code:Own", "bayesian", True),
])
def test_ktc_tuner_resolves_to_the_oracle_the_chief_runs(user, value, algorithm, own_trial):
    choice = tuning.resolve_tuner(value)
    assert choice.algorithm == algorithm and (choice.user_class is None) == (":" not in value)
    if value != "user_code:Bands":
        assert choice.runs_own_trial == own_trial
    oracle = tuning.make_oracle(_settings(KTC_TUNER=value))
    assert type(oracle).__name__ == {"random": "RandomSearchOracle", "hyperband": "HyperbandOracle",
                                     "bayesian": "BayesianOptimizationOracle"}[algorithm]


@pytest.mark.parametrize("value,line", [
    ("user_code:NUMBER", "KTC_TUNER='user_code:NUMBER' is not valid: it is a int, not a subclass of keras_tuner.Tuner"),
    ("user_code:Training", "KTC_TUNER='user_code:Training' is not valid: it is the class Training, not a subclass"),
    ("user_code:Unnamed", "KTC_TUNER='user_code:Unnamed' is not valid: Unnamed subclasses keras_tuner.Tuner "
                          "directly, so it must name its search algorithm: the class attribute ktc_oracle"),
    ("user_code:missing", "KTC_TUNER='user_code:missing': module 'user_code' has no attribute 'missing'"),
])
def test_a_ktc_tuner_that_is_no_keras_tuner_tuner_is_one_line(user, value, line):
    with pytest.raises(ConfigError) as err:
        tuning.resolve_tuner(value)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_settings_take_a_tuner_class_and_refuse_other_shapes():
    assert config.load({"KTC_TUNER": "pkg.mod:MyTuner"}, role="status").tuner == "pkg.mod:MyTuner"
    with pytest.raises(ConfigError, match=r"random \| bayesian \| hyperband \| grid \| module:Class"):
        config.load({"KTC_TUNER": "sgd"}, role="status")
    with pytest.raises(ConfigError, match="KTC_CALLBACKS='not a path'"):
        config.load({"KTC_CALLBACKS": "not a path"}, role="status")


def test_no_model_needs_a_tuner_class_with_its_own_run_trial(user):
    tuning.check_model_for(tuning.resolve_tuner("user_code:Anything"), "none")
    tuning.check_model_for(tuning.resolve_tuner("random"), "")
    for tuner, found in (("random", "a built-in tuner"), ("user_code:Search", "Search, which does not")):
        with pytest.raises(ConfigError) as err:
            tuning.check_model_for(tuning.resolve_tuner(tuner), "none")
        assert str(err.value) == ("KTC_MODEL='none' is not valid: no model needs a KTC_TUNER class that overrides "
                                  f"run_trial (KTC_TUNER is {found})")


def test_callbacks_are_made_fresh_for_every_call_and_checked(user):
    assert tuning.user_callbacks(_settings())() == []
    make = tuning.user_callbacks(_settings(KTC_CALLBACKS="user_code:good_callbacks"))
    first, second = make(), make()
    assert isinstance(first[0], keras.callbacks.EarlyStopping) and first[0] is not second[0]
    for name, found in (("bad_callbacks", "it returned EarlyStopping, not a list of keras.callbacks.Callback"),
                        ("raising_callbacks", "calling it raised RuntimeError: no callbacks today"),
                        ("NUMBER", "'NUMBER' is not callable")):
        with pytest.raises(ConfigError) as err:
            tuning.user_callbacks(_settings(KTC_CALLBACKS=f"user_code:{name}"))
        assert found in str(err.value) and str(err.value).startswith(f"KTC_CALLBACKS='user_code:{name}'")


def test_the_workers_tuner_class_puts_cluster_tuner_first(user):
    from worker.runner import ClusterTuner
    from worker.tuners import HyperbandClusterTuner, tuner_class

    assert tuner_class(tuning.resolve_tuner("random")) is ClusterTuner
    assert tuner_class(tuning.resolve_tuner("hyperband")) is HyperbandClusterTuner
    import user_code

    for name in ("Anything", "Bands", "Own"):
        cls = tuner_class(tuning.resolve_tuner(f"user_code:{name}"))
        assert cls.__mro__[1:3] == (ClusterTuner, getattr(user_code, name))
        assert cls.run_trial is ClusterTuner.run_trial  # the outermost: it records the whole attempt


def test_recording_a_whole_attempt_sees_fit_time_hyperparameters(user):
    hypermodel = hypermodels.resolve("user_code:Training", None)
    hp = kt.HyperParameters()
    with tuning.recording_used(hp) as used:
        hypermodel.fit(hp, hypermodel.build(hp))
    assert used == {"units", "batch_size"} and hp.values["batch_size"] == 16


def test_the_hparams_config_may_grow_only_with_user_training_code(user):
    from chief.startup import may_grow

    for model, tuner, grows in (("", "random", False), ("user_code:build_model", "random", False),
                                ("user_code:Training", "random", True), ("user_code:build_model", "user_code:Search", True),
                                ("none", "user_code:Anything", True)):
        assert may_grow(_settings(KTC_TUNER=tuner), hypermodels.resolve(model, _Digits)) == grows, (model, tuner)


class _Digits:
    input_shape, num_classes = (8, 8, 1), 10


def test_the_hparams_config_grows_with_what_trials_bring(tmp_path):
    from chief.startup import HParamsConfig

    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("score", "min"), max_trials=3)
    space = kt.HyperParameters()
    space.Float("x", -1.0, 1.0)
    oracle.update_space(space)
    settings = _settings(KTC_LOG_DIR=str(tmp_path), KTC_PROJECT="p")
    config_writer = HParamsConfig(settings, None, None, oracle)
    config_writer.start(oracle, defer=True)  # a new project that may grow: written at the first end
    assert not (tmp_path / "p").exists()
    grown = space.copy()
    grown.Choice("batch_size", [16, 32])
    trial = kt.engine.trial.Trial(grown, trial_id="0")
    trial.metrics.update("score", 1.0)
    config_writer(oracle, trial)
    assert config_writer.size == 1 and config_writer.declared == {"score"} and list((tmp_path / "p").iterdir())
    config_writer(oracle, trial)  # nothing new: the config is not written again
    assert config_writer.size == 1
    oracle.update_space(grown)
    trial.metrics.update("spread", 2.0)
    config_writer(oracle, trial)
    assert config_writer.size == 2 and config_writer.declared == {"score", "spread"}
    names = hparams.declared_metrics([], oracle.objective, config_writer.extra)
    assert names == ["score", "spread"]


@pytest.mark.parametrize("model,tuner,refused", [
    ("user_code:compiled", "random", True),  # only Keras's fit reports: refused at start, as before
    ("user_code:OwnScore", "random", False),  # its fit may report the objective itself
    ("user_code:compiled", "user_code:Search", False),  # a Tuner class's run_trial decides: no dry run
    ("none", "user_code:Anything", False),
])
def test_the_objective_is_refused_only_when_nothing_but_kerass_fit_can_report_it(user, tmp_path, model, tuner, refused):
    from chief.startup import StartFailed, prepare

    dirs = {f"KTC_{name}_DIR": str(tmp_path / name.lower()) for name in ("STATE", "LOG", "DATA", "RESULTS")}
    settings = config.load({**dirs, "KTC_DATASET": "digits", "KTC_MODEL": model, "KTC_TUNER": tuner,
                            "KTC_OBJECTIVE": "agreement:max"}, role="chief")
    if refused:
        with pytest.raises(StartFailed) as err:
            prepare(settings)
        assert err.value.code == 2 and str(err.value).startswith("KTC_OBJECTIVE=agreement: the model does not report it")
    else:
        dataset, hypermodel, oracle, space, metrics = prepare(settings)
        assert oracle.objective.name == "agreement" and (hypermodel is None) == (model == "none")
        assert [hp.name for hp in space.space] == ([] if model == "none" else ["units"])

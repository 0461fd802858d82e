"""A search space that changes a recorded hyperparameter's domain is refused at the chief's start,
one line each naming both domains; added ones and changed defaults are accepted (chief.project)."""

import logging
import types

import pytest
from keras_tuner import HyperParameters

from chief import project


def _space(declare) -> HyperParameters:
    hp = HyperParameters()
    declare(hp)
    return hp


def _units(low, high, **kw):
    return lambda hp: hp.Int("units", low, high, **kw)


def test_same_space_changes_nothing():
    changes = project.compare_spaces(_space(_units(16, 64)), _space(_units(16, 64)))
    assert changes == project.SpaceChanges([], [], [])


@pytest.mark.parametrize("old, new, shown", [
    (_units(16, 64), _units(100, 200), ("Int(16..64)", "Int(100..200)")),
    (_units(16, 64), _units(16, 64, step=16), ("Int(16..64)", "Int(16..64, step 16)")),
    (lambda hp: hp.Float("lr", 1e-4, 1e-2), lambda hp: hp.Float("lr", 1e-4, 1e-2, sampling="log"),
     ("Float(0.0001..0.01)", "Float(0.0001..0.01, log)")),
    (lambda hp: hp.Choice("act", ["relu", "tanh"]), lambda hp: hp.Choice("act", ["relu", "gelu"]),
     ("Choice('relu', 'tanh')", "Choice('relu', 'gelu')")),
    (lambda hp: hp.Choice("n", [1, 2]), lambda hp: hp.Choice("n", [1, 2], ordered=False),
     ("Choice(1, 2, ordered=True)", "Choice(1, 2, ordered=False)")),
    (_units(16, 64), lambda hp: hp.Float("units", 0.1, 0.5), ("Int(16..64)", "Float(0.1..0.5)")),
    (lambda hp: hp.Fixed("depth", 2), lambda hp: hp.Fixed("depth", 3), ("Fixed(2)", "Fixed(3)")),
    (lambda hp: hp.Boolean("bn"), lambda hp: hp.Int("bn", 0, 1), ("Boolean", "Int(0..1)")),
])
def test_a_changed_domain_is_named_with_both_forms(old, new, shown):
    changes = project.compare_spaces(_space(old), _space(new))
    assert [c[1:] for c in changes.changed] == [shown] and not changes.added


def test_added_missing_and_default_changes_are_not_refused():
    recorded = _space(lambda hp: (hp.Int("units", 16, 64, default=32), hp.Float("late", 0.0, 1.0)))
    today = _space(lambda hp: (hp.Int("units", 16, 64, default=48), hp.Boolean("bn")))
    changes = project.compare_spaces(recorded, today)  # `late` (drawn in fit, say) is not drawn today
    assert changes == project.SpaceChanges([], ["bn"], [("units", 32, 48)])


def test_a_name_under_new_conditions_is_added_as_keras_tuner_adds_it():
    def declare(values):
        def go(hp):
            hp.Choice("kind", ["a", "b"])
            with hp.conditional_scope("kind", values):
                hp.Int("width", 1, 4)
        return go

    changes = project.compare_spaces(_space(declare(["a"])), _space(declare(["b"])))
    assert changes.changed == [] and changes.added == ["width"]


def test_check_space_refuses_with_one_line_per_change_and_a_record(caplog):
    settings = types.SimpleNamespace(project="p")
    recorded = _space(lambda hp: (hp.Int("units", 16, 64), hp.Choice("act", ["relu"])))
    today = _space(lambda hp: (hp.Int("units", 100, 200), hp.Choice("act", ["tanh"]), hp.Boolean("bn")))
    with pytest.raises(project.Refused) as refused:
        project.check_space(settings, recorded, today)
    assert (refused.value.code, refused.value.record) == (2, True)
    assert refused.value.lines == [
        "KTC_MODEL: hyperparameter 'units' was Int(16..64), is now Int(100..200): project p searched Int(16..64) "
        "(its trials and oracle.json); start a new KTC_PROJECT to search a different space, or change the model back",
        "KTC_MODEL: hyperparameter 'act' was Choice('relu'), is now Choice('tanh'): project p searched "
        "Choice('relu') (its trials and oracle.json); start a new KTC_PROJECT to search a different space, or "
        "change the model back"]
    with caplog.at_level(logging.INFO, logger="ktcluster.chief"):
        project.check_space(settings, recorded, _space(lambda hp: (hp.Int("units", 16, 64, default=20),
                                                                    hp.Choice("act", ["relu"]), hp.Boolean("bn"))))
        project.check_space(settings, HyperParameters(), today)  # a new project: nothing to say
    assert [r.getMessage() for r in caplog.records] == [
        "KTC_MODEL: added to project p's search space: bn",
        "KTC_MODEL: hyperparameter 'units' default 16 -> 20: the recorded default 16 is kept (a default "
        "does not change what is searched)"]

"""The Tuner class a worker runs: ktcluster's ClusterTuner, combined with the user's KTC_TUNER
class when there is one.

`tuner_class(choice)` (choice: shared.tuning.TunerChoice) returns
- ClusterTuner for random, bayesian and grid (KerasTuner's own run_trial; the algorithm is the
  chief's oracle);
- HyperbandClusterTuner for hyperband (Hyperband's run_trial and build: epochs per bracket,
  warm starts);
- `Cluster<UserClass>` for `module:Class`: ClusterTuner first in the MRO, then the user's class
  and its KerasTuner bases. ClusterTuner's run_trial is the outermost (it records every
  hyperparameter the attempt draws, adds the user's callbacks and the attempt guard) and calls
  the user's through super(); the user's on_* hooks, run_trial and HyperModel keep working, and
  every ktcluster guarantee (leases, heartbeats, per-attempt folders, a lost attempt reports
  nothing, an HParams session per attempt) comes from ClusterTuner. The user's `__init__` is not
  called: the oracle is the chief's and ktcluster builds the tuner from the settings.
"""

from __future__ import annotations

import keras_tuner as kt

from worker.runner import ClusterTuner


class HyperbandClusterTuner(ClusterTuner, kt.Hyperband):
    """Hyperband's run_trial/_build_hypermodel (epochs per bracket, warm starts) on ClusterTuner."""


def tuner_class(choice) -> type:
    """The worker's Tuner class for this KTC_TUNER (module docstring)."""
    if choice.user_class is None:
        return HyperbandClusterTuner if choice.algorithm == "hyperband" else ClusterTuner
    user = choice.user_class
    return type("Cluster" + user.__name__, (ClusterTuner, user), {"__module__": __name__})

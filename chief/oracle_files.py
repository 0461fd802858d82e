"""KerasTuner's own files of a project (oracle.json, trial_*/trial.json), read when a chief opens
it: written behind the journal, they may lag, be missing or damaged, or be ahead of a journal
replaced by an older copy. The journal wins; what differs is logged (chief.oracle's `restore`).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time

from keras_tuner.engine import trial as trial_module

from chief.recovery import InconsistentState
from shared.results import trial_order

log = logging.getLogger("ktcluster.chief")


def read_oracle_file(path: str, project_dir: str, known: set[str]) -> dict | None:
    """oracle.json's content (at `path`); None for a new project (no oracle.json, no journal);
    InconsistentState (one line) if it is missing while the journal (`known` trials) is not, or
    cannot be read."""
    try:
        with open(path) as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or not isinstance(saved.get("ongoing_trials"), dict):
            raise ValueError("not an oracle's state")
        for key in ("start_order", "end_order", "retry_queue"):
            if not isinstance(saved.get(key), list):
                raise ValueError(f"no {key} list")
        return saved
    except FileNotFoundError:
        if known:
            raise InconsistentState(
                f"{project_dir} has a journal of {len(known)} trials but no oracle.json; restore "
                "oracle.json, or start a new search (another KTC_PROJECT)") from None
        return None
    except (OSError, ValueError) as exc:
        raise InconsistentState(
            f"{path} cannot be read ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); restore it "
            "from a backup, or start a new search (another KTC_PROJECT)") from None


def load_trial_files(oracle, known: set[str], states: dict[str, dict]) -> set[str]:
    """Trials from their trial.json files, into `oracle.trials`. The journal's states win (a file that is missing,
    damaged or differs is rewritten by the writer, logged here); a trial the journal does not
    know is ahead of it: its folder is set aside (renamed, never deleted) so its id can be
    handed out again cleanly. Returns the ids set aside."""
    files = {}
    for path in glob.glob(os.path.join(oracle.project_dir, "trial_*", "trial.json")):
        try:
            with open(path) as f:
                files[path] = json.load(f)
            trial_id = str(files[path]["trial_id"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            files[path] = exc
    ahead = set()
    for trial_id in sorted(known, key=trial_order):
        path = oracle.trial_file(trial_id)
        content = files.pop(path, None)
        if trial_id not in states:
            if isinstance(content, dict):  # a start without a state line (older journals): the file's
                oracle.trials[trial_id] = trial_module.Trial.from_state(content)
            continue
        expected = json.loads(json.dumps(trial_module.Trial.from_state(states[trial_id]).get_state()))
        if content is None:
            log.warning("%s is missing: rewritten from the journal", path)
        elif isinstance(content, Exception):
            log.warning("%s is damaged (%s): rewritten from the journal", path, type(content).__name__)
        elif content != expected:
            log.info("%s differs from the journal (written behind it): rewritten from the journal", path)
    for path, content in files.items():
        trial_id = str(content.get("trial_id")) if isinstance(content, dict) else None
        if trial_id in known and path == oracle.trial_file(trial_id):
            continue
        folder = os.path.dirname(path)
        aside = f"{folder}.ahead-of-journal-{int(time.time())}"
        os.rename(folder, aside)
        ahead.add(trial_id or os.path.basename(folder).removeprefix("trial_"))
        log.warning("%s is not in the journal (ahead of it, or damaged): set aside as %s", path, aside)
    return ahead


def within(saved: dict, trials: set[str]) -> dict:
    """oracle.json's state naming only `trials` (what the journal knows): an oracle.json ahead of
    a journal replaced by an older copy, or naming a trial whose file is gone, would otherwise
    make stock's set_state raise KeyError or rank trials the journal never saw."""
    state = dict(saved)
    state["ongoing_trials"] = {w: t for w, t in saved["ongoing_trials"].items() if t in trials}
    for key in ("start_order", "end_order", "retry_queue"):
        state[key] = [t for t in saved[key] if t in trials]
    if isinstance(saved.get("run_times"), dict):
        state["run_times"] = {t: n for t, n in saved["run_times"].items() if t in trials}
    if isinstance(saved.get("id_to_hash"), dict):
        state["id_to_hash"] = {t: h for t, h in saved["id_to_hash"].items() if t in trials}
        if isinstance(saved.get("tried_so_far"), list):
            kept = set(state["id_to_hash"].values())
            state["tried_so_far"] = [h for h in saved["tried_so_far"] if h in kept]
    return state

"""A finished project: told apart from one to run before anything heavy is loaded, and reported
from its files with the settings recorded for it; its finished marker is then confirmed for the
workers started with this chief (shared.layout.FinishedWatch)."""

from __future__ import annotations

import logging

log = logging.getLogger("ktcluster.chief")


def finished_record(settings):
    """Report only, or run? Decided first, before any data, model or TensorFlow is loaded.

    Returns the project's chief.status.SearchRecord when the project is finished
    (shared.layout.FINISHED_MARKER) and the settings now ask for no more trials than it was run
    with: the chief then only reports it, with the settings recorded for it (whatever KTC_DATASET,
    KTC_MODEL, KTC_OBJECTIVE... say now), and exits 0. Returns None (start or go on with the
    settings given now) when the project is not finished (new, or stopped midway: it resumes);
    when KTC_MAX_TRIALS was raised above the recorded one for a tuner with a trial budget (the
    search continues); or when it has no valid record (a project from before records: the
    coordinator decides, with today's settings, as it did before)."""
    from chief.status import SearchRecord, read_search
    from shared import layout

    if not layout.search_finished(settings.project_state_dir):
        return None
    try:
        record = read_search(settings.project_state_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s in project %s cannot be read (%s): using the settings given now", layout.SEARCH_RECORD,
                    settings.project, type(exc).__name__)
        return None
    kinds = dict(tuner=str, epochs=int, objective=str, direction=str, dataset=str, model=str)
    if (not isinstance(record, SearchRecord) or type(record.max_trials) not in (int, type(None))
            or any(type(getattr(record, name)) is not kind for name, kind in kinds.items())):
        return None
    if settings.tuner != "hyperband" and record.max_trials is not None and settings.max_trials > record.max_trials:
        log.info("project %s is finished with %d trials; KTC_MAX_TRIALS=%d: continuing it", settings.project,
                 record.max_trials, settings.max_trials)
        return None
    return record


def report_finished(settings, record) -> None:
    """A finished project's results and final line, from its files and recorded settings (no data
    or model is loaded; best_model.keras is the one written when it finished). Raises
    chief.startup.StartFailed (code 1, one line) when its state or results cannot be had.
    Whatever the report's outcome, the finished marker is then confirmed (`confirm_finished`)."""
    try:
        _report(settings, record)
    finally:
        confirm_finished(settings)


def confirm_finished(settings) -> None:
    """Tell the workers started with this chief that the search is over: they wait for the chief's
    word on a project marked finished (shared.layout.FinishedWatch) and exit 0 on seeing the marker
    written again. Best effort: workers that miss it exit 0 after KTC_CHIEF_TIMEOUT_SECONDS."""
    from shared import layout

    try:
        layout.confirm_finished(settings.project_state_dir)
    except OSError as exc:
        log.warning("could not confirm the finished marker of project %s for the workers (%s): they exit after "
                    "KTC_CHIEF_TIMEOUT_SECONDS", settings.project, exc)


def _report(settings, record) -> None:
    from chief import progress, status
    from chief.journal import JournalCorrupt
    from chief.startup import StartFailed

    now = {"KTC_TUNER": (record.tuner, settings.tuner), "KTC_EPOCHS": (record.epochs, settings.epochs),
           "KTC_OBJECTIVE": (record.objective, settings.objective.name),
           "KTC_DATASET": (record.dataset, settings.dataset), "KTC_MODEL": (record.model, settings.model)}
    if record.max_trials is not None:
        now["KTC_MAX_TRIALS"] = (record.max_trials, settings.max_trials)
    ignored = [f"{name}={new or '(empty)'}" for name, (old, new) in now.items() if old != new]
    log.info("project %s is already finished: reporting it as it was run (%s search, %s trials, %d epochs, "
             "objective %s %s, dataset %s, model %s)%s", settings.project, record.tuner,
             record.max_trials or "hyperband's", record.epochs, record.objective, record.direction, record.dataset,
             record.model or "(guide model)",
             f"; not used for it: {', '.join(ignored)} (a new KTC_PROJECT starts a search with them)"
             if ignored else "")
    try:
        snap = status.snapshot(settings)
    except JournalCorrupt as exc:
        raise StartFailed(1, f"KTC_PROJECT={settings.project}: {exc}") from None
    if snap is None:
        raise StartFailed(1, f"KTC_PROJECT={settings.project}: marked finished but has no oracle state in "
                             f"{settings.project_state_dir}")
    try:
        log.info(progress.final_report(snap, settings.project_results_dir))
    except OSError as exc:
        raise StartFailed(1, f"writing the results of finished project {settings.project} failed "
                             f"({exc}); free space or fix KTC_RESULTS_DIR") from None
    give_results_away(settings)


def give_results_away(settings) -> None:
    """The results belong to whoever owns the results folder (in Compose: the user's ./results)."""
    from shared import results

    try:
        results.give_to_folder_owner(settings.results_dir, settings.project_results_dir)
    except OSError as exc:  # e.g. a host folder that refuses chown: the files are there all the same
        log.warning("results in %s keep their owner: %s", settings.project_results_dir, exc)

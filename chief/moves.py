"""Carrying out the trial state machine's moves for the coordinator: the machine decides and
applies (chief.trials), then the oracle follows (chief.oracle), the journal records the move's
record, and the tally, the stop policy, the metrics hook and the log hear of it.
"""

from __future__ import annotations

import logging

from keras_tuner.engine import trial as trial_module

from chief.leases import token_digest
from chief.trials import Caller, Cause, Effects, Phase
from shared.logs import last_line

log = logging.getLogger("ktcluster.chief")
INVALID = trial_module.TrialStatus.INVALID


class MovesMixin:
    """For chief.coordinator.Coordinator (which provides the book, the oracle, the journal, the
    tally, the stop policy, `trial_lines`, `on_attempt_end`, `_lost_later` and `_wall`, the wall
    clock); under its lock."""

    def _start_attempt(self, trial, tuner_id: str, caller: Caller, now: float):
        """The state machine's start of a new attempt (its journal line naming the token), the
        oracle following; the run after it."""
        token = None if caller.anonymous else token_digest(caller.instance)
        started = self.book.decide_start(trial.trial_id, tuner_id, stock=caller.anonymous, now=now, token=token)
        effects = self.book.apply(started)
        self.oracle.follow(effects, trial)
        self.journal.append(started.to_record())
        return effects.run

    def _lose(self, trial_id: str, worker: str, message: str) -> None:
        """The chief ends `worker`'s attempt of `trial_id` (INVALID: retried while retries last)."""
        effects = self._end(self.oracle.lost_copy(trial_id, message), worker, INVALID, message, cause=Cause.CHIEF)
        log.warning("trial %s: %s; %s", trial_id, message,
                    "re-queued" if effects.run.phase is Phase.QUEUED else "out of retries")
        self._lost_later.append(effects.lost)

    def _end(self, trial, worker: str, status: str, message: str, used=None, cause: Cause = Cause.OWNER) -> Effects:
        """The state machine decides how the attempt ends and applies it; the oracle, the journal,
        the tally, the stop policy and the log follow."""
        oracle, note = self.oracle, last_line(message)
        ended = self.book.decide_end(trial.trial_id, status, cause, self._wall(), oracle.max_retries_per_trial,
                                     note, used)
        effects = self.book.apply(ended)
        oracle.follow(effects, trial)
        self.journal.append(ended.to_record())
        self.tally.ended(oracle.trials[trial.trial_id], effects.run)
        self.on_attempt_end(trial.trial_id, ended.outcome.status, cause, message)
        reason = self.stop.ended(ended)
        if reason:
            log.error("search stopped: %s", reason)
        if effects.trouble:
            log.info("trial %s %s by %s: %s", trial.trial_id, ended.outcome.status, worker, note)
        elif self.trial_lines.allow():
            log.info("trial %s %s by %s: %s=%s", trial.trial_id, ended.outcome.status, worker, oracle.objective.name,
                     oracle.trials[trial.trial_id].score)
        return effects

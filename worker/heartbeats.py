"""The worker's registration and heartbeats (ktcluster's Cluster service), for worker.client.

Register claims the worker id for this process's secret token (a restarted worker waits for its
previous process's presence to lapse) and sends the settings fingerprint; a thread then sends
heartbeats every KTC_HEARTBEAT_SECONDS the chief names, so a long epoch never looks like a dead
worker. A reply lists the attempts the chief counts as ours (`attempts`): one we run that it does
not list was taken away; `finished` ends the search; `ok: False` asks us to register again.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import grpc

from shared import layout
from worker.channel import DuplicateWorkerId, SettingsMismatch

log = logging.getLogger("ktcluster.worker")


class HeartbeatsMixin:
    """For worker.client.OracleClient (which provides `_call`, `cluster`, `_redial`, `attempts`,
    `_lose`, `tuner_id`, `instance`, `project_state_dir`, `finished` and `_stopping`)."""

    def register(self, claim_seconds: float, fingerprint: dict | None = None) -> dict:
        """Claim this worker id. A restarted worker may find its previous process still counted
        as present for a few heartbeats: it keeps asking for `claim_seconds`, then gives up.
        `fingerprint` (shared.fingerprint's wire form): SettingsMismatch if the chief's differs."""
        info = f"{socket.gethostname()} pid {os.getpid()}"
        self.fingerprint = fingerprint
        request = {"worker": self.tuner_id, "instance": self.instance, "info": info}
        if fingerprint is not None:
            request["fingerprint"] = fingerprint
        give_up = time.monotonic() + claim_seconds
        while True:
            try:
                reply, _ = self._call("Register", request)
                break
            except DuplicateWorkerId:
                if time.monotonic() >= give_up:
                    raise
                self._stopping.wait(1.0)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                raise SettingsMismatch(exc.details()) from None
        self.heartbeat_seconds = reply["heartbeat_seconds"]
        if self._heartbeats is None:
            self._heartbeats = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._heartbeats.start()
        return reply

    def _beat(self):
        """Heartbeats until close(). An outage is logged when it starts and when it ends; the
        main thread's calls decide when to give up on the chief."""
        request = {"worker": self.tuner_id, "instance": self.instance}
        unheard_since = None
        while not self._stopping.wait(self.heartbeat_seconds):
            sent = time.monotonic()
            try:
                reply, _ = self.cluster.Heartbeat.with_call(request, timeout=self.heartbeat_seconds)
            except grpc.RpcError as exc:
                if unheard_since is None:
                    unheard_since = sent
                    log.warning("%s: heartbeat unanswered (%s); training goes on", self.tuner_id, exc.code().name)
                self._redial()
                if layout.finished_watch(self.project_state_dir).final():
                    self._search_over("the chief is unreachable and the search is marked finished")
                continue
            if unheard_since is not None:
                log.info("%s: the chief answers again, after %.1fs", self.tuner_id, time.monotonic() - unheard_since)
                unheard_since = None
            try:
                self._heard(reply, sent)
                if not reply.get("ok"):  # the chief restarted, or our lease lapsed: claim the id again
                    again = {**request, "info": "re-register"}
                    if self.fingerprint is not None:
                        again["fingerprint"] = self.fingerprint
                    self.cluster.Register.with_call(again, timeout=self.heartbeat_seconds)
            except grpc.RpcError as exc:
                log.debug("re-register failed: %s", exc.code())

    def _heard(self, reply: dict, sent: float) -> None:
        """Apply a heartbeat reply sent at `sent`: attempts missing from (or different in) its
        `attempts` are lost, unless handed out after the heartbeat left (the chief could not
        have listed them). An `ok: False` reply (re-register first) or one without `attempts`
        (an older chief) decides nothing about attempts."""
        if reply.get("finished"):
            self._search_over("the chief says the search is over")
        owned = reply.get("attempts")
        if not reply.get("ok") or not isinstance(owned, dict):
            return
        for trial_id, listed in self.attempts.unlisted(owned, sent):
            self._lose(trial_id, f"the chief's heartbeat lists attempt {listed}")

    def _search_over(self, why: str) -> None:
        if not self.finished.is_set():
            log.info("%s: %s", self.tuner_id, why)
        self.finished.set()
        for trial_id in self.attempts.trial_ids():
            self._lose(trial_id, "the search is over")

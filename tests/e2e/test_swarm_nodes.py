"""The stack on a two-node swarm (tests/e2e/swarm2.py: two engines in two network namespaces on one
bridge), deployed as a user would: `stack.yaml` + `stack.shared.yaml` (the volumes on one share,
here a host folder both engines bind-mount, standing in for NFS), the chief placed by the node
label `ktc.chief=true` (KTC_CHIEF_CONSTRAINT), workers on both nodes, gRPC over the overlay network.

Two searches hold every fault, in sequence, so that CI pays for two start-ups only:
- search A: a short cut between the nodes (under the lease: nothing re-run), a long cut (past the
  lease, until node 2's trial is re-run on node 1; then healed: node 2's late attempt counts for
  nothing and writes nothing more), then node 2 is lost (its engine and containers SIGKILLed): its
  trial is re-run on node 1 and the search ends; node 2 comes back and rejoins.
- search B, with mutual TLS (`stack.tls.yaml`): node 2 is used again; a container on the overlay
  network without the cluster's certificate is refused; node 1, the chief's node, is lost: the
  manager (node 2) reschedules the chief there, it resumes from the journal on the share, the
  workers redial it, nothing finished is re-run.
Every trial is COMPLETED exactly once in both; every wait is bounded (a hang fails). The cluster
is torn down at the end, also on failure, and nothing of it may remain (checked at teardown)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.e2e import swarm, swarm2
from tests.e2e.compose import new_stack
from tests.e2e.nodes_stack import Probe, Search, attempt_files, end_of, next_attempt, start_of
from tests.procs import wait_until

LEASE = 8
TRIALS_A, TRIALS_B = 8, 8
SETTINGS = dict(KTC_DATASET="digits", KTC_EPOCHS=20, KTC_SEED=5, KTC_TF_THREADS=1, KTC_STOP_GRACE_SECONDS=5,
                KTC_LEASE_SECONDS=LEASE, KTC_HEARTBEAT_SECONDS=1, KTC_CHIEF_TIMEOUT_SECONDS=300, KTC_WORKERS=2,
                KTC_MAX_RETRIES=2, KTC_CHIEF_CONSTRAINT="node.labels.ktc.chief == true")
FIGURES: dict[str, float] = {}  # seconds, printed at the end (docs/faults.md)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    swarm.require_tools("the two-node Swarm test", extra=("iptables",))
    builder = new_stack("ktcsw2build", tmp_path_factory.mktemp("sw2build"))
    builder.ensure_image()
    tag = builder.env["KTC_IMAGE_TAG"]
    nodes = swarm2.Cluster()
    try:
        began = time.monotonic()
        nodes.start(f"ktcluster:{tag}")
        FIGURES["cluster start (engines, image, swarm)"] = time.monotonic() - began
        nodes.image_tag = tag
        yield nodes
    finally:
        nodes.stop()
        print("two-node figures (s):", {k: round(v, 1) for k, v in FIGURES.items()})
        left = swarm2.leftovers()
        assert left == [], f"the two-node test left {left}"


@pytest.fixture(scope="module")
def search_a(cluster, tmp_path_factory):
    """Short cut, long cut and heal, then node 2 lost, then node 2 back; what the tests look at."""
    tmp = tmp_path_factory.mktemp("sw2a")
    cluster.manager.docker("swarm", "update", "--dispatcher-heartbeat", "20s")  # a node is down after 40-60 s
    s = Search(cluster, f"ktcsw2a{os.getpid()}", tmp, [], KTC_MAX_TRIALS=TRIALS_A, KTC_PROJECT="nodesa", **SETTINGS)
    seen = {"cut_trials": {}}
    try:
        seen["workers"] = w = wait_until(s.workers_by_node, 240, interval=1, what="a worker on each node")
        seen["chief_node"] = wait_until(s.chief_node, 60, interval=1, what="the chief running")
        held = wait_until(lambda: s.holding(w[2]), 300, interval=0.5, what=f"{w[2]} on node 2 to run a trial")
        FIGURES["deploy to first trial on node 2"] = time.monotonic() - s.deployed
        # Short cut: under the lease. Nothing may be taken away.
        cluster.cut()
        time.sleep(LEASE / 2)
        cluster.heal()
        seen["short"] = held
        # Long cut: node 2's trial is taken away after the lease and re-run on node 1; then heal.
        held = wait_until(lambda: next_attempt(s.holding(w[2]), seen["short"]), 120, interval=0.5,
                          what=f"{w[2]} to hold its next trial")
        seen["long"] = trial, attempt = held
        cut_at = time.monotonic()
        cluster.cut()
        wait_until(lambda: end_of(s.events(), trial, attempt), 60, interval=0.5,
                   what=f"trial {trial} attempt {attempt} to lose its lease")
        FIGURES["long cut: cut to lease expired"] = time.monotonic() - cut_at
        rerun = wait_until(lambda: start_of(s.events(), trial, attempt + 1), 60, interval=0.5,
                           what=f"trial {trial} to be re-run")
        FIGURES["long cut: cut to re-run on node 1"] = time.monotonic() - cut_at
        seen["long_rerun"] = rerun
        cluster.heal()
        healed_at = time.monotonic()
        FIGURES["long cut: length"] = healed_at - cut_at
        seen["node1_state_after_cut"] = cluster.node_state(1)
        wait_until(lambda: next_attempt(s.holding(w[2]), held), 120, interval=0.5,
                   what=f"{w[2]} to take a new trial after the heal")
        FIGURES["heal to node 2's next trial"] = time.monotonic() - healed_at
        seen["lost_files_after_heal"] = attempt_files(s.share, s.project, trial, attempt)
        # Node 2 is lost with its containers: its trial is re-run on node 1, the search ends.
        seen["killed"] = trial2, attempt2 = s.holding(w[2])
        seen["killed_pids"] = cluster.nodes[1].kill()
        kill_at = time.monotonic()  # every process of node 2 is gone now
        wait_until(lambda: end_of(s.events(), trial2, attempt2), 60, interval=0.5,
                   what=f"trial {trial2} to lose its lease after node 2's loss")
        FIGURES["node 2 lost: kill to lease expired"] = time.monotonic() - kill_at
        seen["killed_rerun"] = wait_until(lambda: start_of(s.events(), trial2, attempt2 + 1), 90, interval=0.5,
                                          what=f"trial {trial2} re-run")
        wait_until(s.finished, 300, interval=1, what="search A to finish on node 1")
        FIGURES["node 2 lost: kill to search finished"] = time.monotonic() - kill_at
        seen["lost_files_at_end"] = attempt_files(s.share, s.project, trial, attempt)
        # Node 2 comes back: its engine restarts from its data-root and the swarm has two nodes again.
        back_at = time.monotonic()
        cluster.nodes[1].start()
        wait_until(lambda: cluster.node_state(1) == "ready" and cluster.node_state(2) == "ready", 120,
                   interval=1, what="both nodes ready after node 2's return")
        FIGURES["node 2 back: engine start to both nodes ready"] = time.monotonic() - back_at
        seen.update(events=s.events(), trials=s.trials(), chief_log=s.logs("chief"))
    finally:
        print(s.logs("chief")[-5000:])
        (tmp / "chief.log").write_text(s.logs("chief"))
        (tmp / "worker.log").write_text(s.logs("worker"))
        s.remove()
    yield seen


def _completed_once(seen, total):
    finals = [e["trial"] for e in seen["events"] if e["event"] == "end" and e["status"] == "COMPLETED"]
    assert sorted(map(int, finals)) == list(range(total)), finals
    assert sorted(int(r["trial_id"]) for r in seen["trials"]) == list(range(total))
    assert {r["status"] for r in seen["trials"]} == {"COMPLETED"}


def test_two_nodes_chief_on_node_1_a_worker_on_each(search_a):
    assert search_a["chief_node"] == 1
    assert sorted(search_a["workers"]) == [1, 2]


def test_every_trial_completed_exactly_once_through_cuts_and_node_loss(search_a):
    _completed_once(search_a, TRIALS_A)


def test_short_cut_re_runs_nothing(search_a):
    trial, attempt = search_a["short"]
    ends = [e for e in search_a["events"] if e["event"] == "end" and e["trial"] == trial]
    assert [(e["attempt"], e["status"]) for e in ends] == [(attempt, "COMPLETED")], ends


def test_long_cut_takes_node_2s_trial_to_node_1_and_its_late_attempt_counts_for_nothing(search_a):
    trial, attempt = search_a["long"]
    events, workers = search_a["events"], search_a["workers"]
    lost = end_of(events, trial, attempt)
    assert lost["status"] == "RETRY" and lost["cause"] == "chief", lost  # the lease, not a report
    assert search_a["long_rerun"]["worker"] == workers[1]
    accepted = [e for e in events if e["event"] == "end" and e["trial"] == trial and e["status"] == "COMPLETED"]
    assert [e["attempt"] for e in accepted] == [attempt + 1]
    row = next(r for r in search_a["trials"] if r["trial_id"] == trial)
    assert row["worker"] == workers[1] and int(row["attempts"]) == attempt + 1
    assert search_a["node1_state_after_cut"] == "ready"  # the swarm kept its tasks; only the trial moved
    # Node 2's worker was held in a progress report through the cut; sent after the heal, refused.
    assert f"of trial {trial} attempt {attempt} from {workers[2]} refused" in search_a["chief_log"]
    # After the heal node 2's worker learnt that the attempt was gone (it took its next trial):
    # nothing more in the attempt's folders, which it had written to before the cut.
    assert search_a["lost_files_after_heal"] and search_a["lost_files_at_end"] == search_a["lost_files_after_heal"]


def test_node_2_lost_its_trial_re_run_on_node_1_and_the_search_ended(search_a):
    trial, attempt = search_a["killed"]
    lost = end_of(search_a["events"], trial, attempt)
    assert lost["status"] == "RETRY" and lost["cause"] == "chief", lost
    assert search_a["killed_rerun"]["worker"] == search_a["workers"][1]
    assert f"search finished: {TRIALS_A} completed, 0 failed of {TRIALS_A}" in search_a["chief_log"]


# -- search B: node 2 used again, mutual TLS, the chief's node lost --------------------------------

@pytest.fixture(scope="module")
def search_b(cluster, search_a, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sw2b")
    tls_dir = tmp / "tls"
    subprocess.run([sys.executable, "-m", "shared.tls", "make", str(tls_dir)],
                   cwd=ROOT, check=True, capture_output=True, timeout=60)
    cluster.manager.docker("swarm", "update", "--dispatcher-heartbeat", "3s")  # node 1's loss seen in 6-9 s
    s = Search(cluster, f"ktcsw2b{os.getpid()}", tmp, ["stack.tls.yaml"], KTC_TLS_DIR=str(tls_dir),
               KTC_MAX_TRIALS=TRIALS_B, KTC_PROJECT="nodesb", **SETTINGS)
    seen, probe = {}, None
    try:
        seen["workers"] = w = wait_until(s.workers_by_node, 240, interval=1, what="a worker on each node")
        seen["chief_node"] = wait_until(s.chief_node, 60, interval=1, what="the chief running")
        probe = Probe(cluster, s)
        wait_until(lambda: s.holding(w[2]), 300, interval=0.5, what=f"{w[2]} on the returned node 2 to run a trial")
        seen["probe"] = wait_until(probe.ended, 180, interval=1, what="the probe to end")
        # Node 2 may hold the chief too (a standby a user labels); node 1 holds it now.
        cluster.label(2, "ktc.chief", "true")
        wait_until(lambda: s.holding(w[1]) and any(e["event"] == "end" for e in s.events()), 120, interval=0.5,
                   what="a finished trial and one running on node 1")
        seen["finished_before"] = {e["trial"] for e in s.events() if e["event"] == "end" and e["status"] == "COMPLETED"}
        seen["killed"] = s.holding(w[1])
        cluster.nodes[0].kill()
        kill_at = time.monotonic()
        wait_until(lambda: cluster.node_state(1) == "down", 60, interval=0.5, what="node 1 seen down")
        FIGURES["chief's node lost: kill to node down"] = time.monotonic() - kill_at
        wait_until(lambda: s.chief_node() == 2, 120, interval=0.5, what="the chief rescheduled on node 2")
        FIGURES["chief's node lost: kill to chief running on node 2"] = time.monotonic() - kill_at
        wait_until(lambda: sum(e["event"] == "chief" for e in s.events()) >= 2, 120, interval=0.5,
                   what="the new chief to take the project over")
        FIGURES["chief's node lost: kill to project resumed"] = time.monotonic() - kill_at
        wait_until(s.finished, 300, interval=1, what="search B to finish on node 2")
        FIGURES["chief's node lost: kill to search finished"] = time.monotonic() - kill_at
        seen.update(events=s.events(), trials=s.trials(), chief_log=s.logs("chief"), worker_log=s.logs("worker"))
    finally:
        print(s.logs("chief")[-5000:])
        (tmp / "chief.log").write_text(s.logs("chief"))
        (tmp / "worker.log").write_text(s.logs("worker"))
        if probe:
            probe.remove()
        s.remove()
    yield seen


def test_returned_node_2_is_used_again(search_b):
    assert sorted(search_b["workers"]) == [1, 2]
    assert any(r["worker"] == search_b["workers"][2] for r in search_b["trials"]), search_b["trials"]


def test_tls_refuses_a_container_without_the_cluster_certificate(search_b):
    probe = search_b["probe"]
    assert "(7)" in probe["task"]["Error"], probe  # exit 7: plaintext and certificate-less TLS refused
    assert "served" not in probe["logs"], probe["logs"]


def test_chief_rescheduled_on_node_2_resumed_and_re_ran_nothing_finished(search_b):
    events = search_b["events"]
    assert search_b["chief_node"] == 1
    assert "resumed project nodesb" in search_b["chief_log"]
    for trial in search_b["finished_before"]:
        assert [e["attempt"] for e in events if e["event"] == "start" and e["trial"] == trial] == [1], trial
    assert f"search finished: {TRIALS_B} completed, 0 failed of {TRIALS_B}" in search_b["chief_log"]


def test_every_trial_completed_exactly_once_with_tls_and_the_chief_moved(search_b):
    _completed_once(search_b, TRIALS_B)
    trial, attempt = search_b["killed"]
    # Node 1's trial ran again on node 2 (the only node left), by node 2's worker or by node 1's
    # worker task rescheduled there (same slot, same id).
    assert start_of(search_b["events"], trial, attempt + 1), search_b["events"]
    assert end_of(search_b["events"], trial, attempt + 1)["status"] == "COMPLETED"


def test_workers_redialled_the_moved_chief(search_b):
    node2_worker = search_b["workers"][2]
    starts = [e for e in search_b["events"] if e["event"] == "start" and e["worker"] == node2_worker]
    chief_lines = [e["t"] for e in search_b["events"] if e["event"] == "chief"]
    assert any(e["t"] > chief_lines[-1] for e in starts), (starts, chief_lines)


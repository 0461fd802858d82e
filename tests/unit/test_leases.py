import pytest

from chief.leases import DuplicateWorker, Leases, Presence


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def test_heartbeats_keep_a_lease_alive(clock):
    leases = Leases(lease_seconds=10, presence_seconds=3, clock=clock)
    leases.register("worker-1", "a")
    for _ in range(20):
        clock.now += 2
        assert leases.beat("worker-1", "a")
        assert leases.expired() == []


def test_silence_expires_the_lease_once(clock):
    leases = Leases(10, 3, clock=clock)
    leases.register("worker-1", "a")
    leases.register("worker-2", "b")
    clock.now += 9.9
    leases.beat("worker-2", "b")
    assert leases.expired() == []
    clock.now += 0.1
    assert leases.expired() == ["worker-1"]
    assert leases.expired() == []  # forgotten: reported once
    assert not leases.beat("worker-1", "a")  # must register again


def test_duplicate_live_instance_is_refused(clock):
    leases = Leases(10, 3, clock=clock)
    leases.register("worker-1", "a", info="host-a pid 1")
    clock.now += 1
    with pytest.raises(DuplicateWorker, match="'worker-1' is already used by a live worker \\(host-a pid 1\\)"):
        leases.register("worker-1", "b")
    assert leases.holds("worker-1", "a") and not leases.holds("worker-1", "b")


def test_restarted_worker_claims_its_id_after_presence_timeout(clock):
    leases = Leases(10, 3, clock=clock)
    leases.register("worker-1", "old")
    clock.now += 3.5  # old process silent: gone, but its lease (10 s) is still live
    leases.register("worker-1", "new")
    assert leases.holds("worker-1", "new") and not leases.beat("worker-1", "old")
    assert leases.expired() == []


def test_granted_leases_are_claimed_by_first_instance(clock):
    leases = Leases(10, 3, clock=clock)
    leases.grant("worker-3")
    assert leases.holds("worker-3", None)
    assert leases.beat("worker-3", "x")  # first heartbeat after a chief restart claims it
    clock.now += 1
    with pytest.raises(DuplicateWorker):
        leases.register("worker-3", "y")


def test_granted_lease_expires_if_nobody_returns(clock):
    leases = Leases(10, 3, clock=clock)
    leases.grant("worker-3")
    clock.now += 10
    assert leases.expired() == ["worker-3"]


def test_time_the_chief_was_deaf_does_not_count_against_a_lease(clock):
    leases = Leases(10, 3, clock=clock)
    leases.register("worker-1", "a")
    leases.register("worker-2", "b")
    clock.now += 30
    leases.deaf(25)  # heartbeats waited for 25 of those 30 s
    assert leases.expired() == []
    assert leases.register("worker-1", "a-restarted")  # presence is not extended: a new process may claim the id
    clock.now += 5
    assert leases.expired() == ["worker-2"]
    assert leases.beat("worker-1", "a-restarted")


def test_presence_counts_holders_and_lists_the_workers_silent_past_the_threshold(clock):
    leases = Leases(60, 3, clock=clock, stock_lease_seconds=600)
    leases.register("worker-1", "a")
    leases.register("worker-2", "b")
    leases.renew_stock("stock-1")  # no heartbeats, only calls an epoch apart: never listed
    leases.grant("worker-3")  # kept across a chief restart, not claimed yet
    clock.now += 2
    assert leases.presence(silent_after=2) == Presence(workers=4, silent={})  # not more than 2 s yet
    clock.now += 3
    leases.beat("worker-2", "b")
    assert leases.presence(silent_after=2) == Presence(4, {"worker-1": 5.0, "worker-3": 5.0})
    leases.deaf(4)  # the chief could not hear heartbeats for 4 of those seconds
    assert leases.presence(silent_after=2) == Presence(4, {})
    clock.now += 60
    leases.beat("worker-2", "b")
    leases.expired()
    assert leases.presence(silent_after=2) == Presence(2, {})  # worker-1 and worker-3 expired, forgotten

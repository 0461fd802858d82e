"""shared.logs.OncePerWindow: at most one line per key per window, with a fake clock."""

import threading

import pytest

from shared.logs import OncePerWindow


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_one_line_per_key_per_window_then_the_count_of_what_was_dropped():
    clock = Clock()
    once = OncePerWindow(5.0, clock=clock)
    assert once.allow(("w1", "bad space")) == 1
    assert [once.allow(("w1", "bad space")) for _ in range(300)] == [0] * 300
    assert once.allow(("w2", "bad space")) == 1  # another caller: its own line
    assert once.allow(("w1", "bad metric")) == 1  # another reason: its own line
    clock.now += 4.9
    assert once.allow(("w1", "bad space")) == 0
    clock.now += 0.1
    assert once.allow(("w1", "bad space")) == 302  # itself, and the 301 dropped since the last line
    assert once.allow(("w1", "bad space")) == 0


def test_memory_is_bounded_and_the_oldest_key_is_forgotten_first():
    clock = Clock()
    once = OncePerWindow(60.0, clock=clock, max_keys=3)
    for key in "abc":
        assert once.allow(key) == 1
    assert once.allow("d") == 1  # "a" is forgotten
    assert once.allow("b") == 0 and once.allow("a") == 1


def test_a_window_must_be_positive():
    with pytest.raises(ValueError):
        OncePerWindow(0)


def test_threads_racing_on_one_key_get_one_line():
    once = OncePerWindow(60.0)
    allowed = []
    threads = [threading.Thread(target=lambda: allowed.append(once.allow("k"))) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(allowed) == [0] * 19 + [1]

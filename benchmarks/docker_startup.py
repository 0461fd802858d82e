"""`docker compose up -d` to the oracle serving and to the first trial started, cold and warm.

The stack is the README's (`compose.yaml`, 2 workers), on the image of this tree (built first if
missing, not timed), with digits (no download) and a 1-trial search. Times come from the chief's
own log lines (`oracle serving`, the first `-> worker-N`), against the host clock taken just before
`up` (containers share the host's clock); the stack is polled only once a second to see that it
got there, so polling does not slow what it measures.

- cold: nothing of the stack exists (`down -v`: no containers, volumes or network) and, with
  `cold_cache` (root only), the kernel's page cache is dropped first, as on the first run after a
  boot: the image's TensorFlow files are read from disk again.
- warm: the same right after, with the page cache as the previous run left it.
Rounds alternate cold and warm, so drift on the machine hits both alike.
"""

from __future__ import annotations

import calendar
import pathlib
import re
import subprocess
import tempfile
import time

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})"
SERVING = re.compile(_STAMP + r" .*oracle serving on port")
FIRST_TRIAL = re.compile(_STAMP + r" .*trial \S+ -> worker-\d+ \(attempt 1\)")


def _first(pattern: re.Pattern, log: str) -> float | None:
    """Epoch seconds of the first line matching `pattern` (the chief logs UTC wall-clock time)."""
    match = pattern.search(log)
    if match is None:
        return None
    return calendar.timegm(time.strptime(match[1], "%Y-%m-%d %H:%M:%S")) + int(match[2]) / 1000


def drop_page_cache() -> bool:
    """Drop the kernel's clean page cache (root only): the next reads come from disk."""
    try:
        subprocess.run(["sync"], check=True, timeout=60)
        pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _one_up(stack, timeout: float = 300) -> dict:
    """`up -d` on a stack with nothing left of a previous run; seconds to serving and first trial."""
    from tests.procs import wait_until

    stack.compose("down", "-v", "--timeout", "5", timeout=120)
    t0 = time.time()
    stack.compose("up", "-d", timeout=timeout)
    up_returned = time.time() - t0
    log = wait_until(lambda: (lambda text: text if FIRST_TRIAL.search(text) else None)(stack.logs("chief")),
                     timeout, interval=1.0, what="the first trial")
    return {"up_returned": up_returned, "to_serving": _first(SERVING, log) - t0,
            "to_first_trial": _first(FIRST_TRIAL, log) - t0}


def run(repeats: int, cold_cache: bool) -> dict | None:
    """`repeats` rounds of (cold, warm); None without Docker and Compose v2."""
    from tests.e2e.compose import docker_available, new_stack

    if not docker_available():
        return None
    out = {"cold": [], "warm": [], "cold_cache_dropped": False}
    with tempfile.TemporaryDirectory() as tmp:
        stack = new_stack("ktcbench", pathlib.Path(tmp), KTC_DATASET="digits", KTC_MAX_TRIALS=1, KTC_EPOCHS=1,
                          KTC_PROJECT="start", KTC_STOP_GRACE_SECONDS=5)
        try:
            stack.ensure_image()
            for _ in range(repeats):
                if cold_cache:
                    out["cold_cache_dropped"] = drop_page_cache()
                out["cold"].append(_one_up(stack))
                out["warm"].append(_one_up(stack))
        finally:
            stack.close()
    return out

"""`Coordinator.validate()` after every coordinator call (issue 23): the book, the journal replayed
and the oracle agree after each call, refused ones included. The unit tests patch the class in
process (tests/unit/conftest.py); the integration tests' chiefs run through
`python -m tests.validated_chief` (tests.procs.python), which patches it the same way and ends the
chief at the first disagreement with INVARIANT_EXIT and one line naming it."""

import functools
import logging
import os
import sys

CALLS = ("register", "heartbeat", "expire_leases", "get_space", "update_space", "create_trial", "update_trial",
         "end_trial", "get_trial", "get_best_trials")
INVARIANT_EXIT = 70
INVARIANT_LINE = "ktcluster chief: invariant broken"


def validated(method, on_broken=None):
    """`method`, followed by `self.validate()` whether it returned or raised. `on_broken(exc)`, if
    given, is called with the validation's exception instead of raising it."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            try:
                self.validate()
            except Exception as exc:
                if on_broken is None:
                    raise
                on_broken(exc)

    return call


def patch(coordinator_class, on_broken=None, setattr=setattr) -> None:
    """Validate after every call of `coordinator_class`'s CALLS."""
    for name in CALLS:
        setattr(coordinator_class, name, validated(getattr(coordinator_class, name), on_broken))


def exit_broken(exc) -> None:
    """A chief process's invariant broke: one line, then exit at once (the test sees the code)."""
    logging.getLogger("ktcluster.chief").error("%s: %s", INVARIANT_LINE, exc)
    print(f"{INVARIANT_LINE}: {exc}", file=sys.stderr, flush=True)
    os._exit(INVARIANT_EXIT)

"""`python -m tests.validated_chief`: `python -m chief` (serving a search), with the coordinator's
invariant checked after every call (tests.validation). The integration tests start it in place of
the chief (tests.procs.python). The coordinator is patched only when a search starts (in
chief.startup.start), so a chief that only reports a finished project loads nothing more than
`python -m chief` does."""

import sys

from chief import startup
from chief.__main__ import _exit_now, main
from tests import validation


def _start_validated(settings, start=startup.start):
    import chief.coordinator

    validation.patch(chief.coordinator.Coordinator, on_broken=validation.exit_broken)
    return start(settings)


if __name__ == "__main__":
    startup.start = _start_validated
    _exit_now(main(sys.argv[1:]))

"""Crash-safe file writes: write a temporary file, rename it over the target.

A reader (or a restarted process after a kill -9) sees the old file or the new
one, never half of one: the rename is atomic and the data is in the kernel
before it. `fsync=True` also forces it to the disk first, which is what
survives a power cut too (KTC_FSYNC=1), at a cost per write.
"""

from __future__ import annotations

import os
import threading


def write_text_atomic(path: str, text: str, fsync: bool = True) -> None:
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"  # unique per writer thread
    try:
        with open(tmp, "w") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

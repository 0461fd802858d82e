"""`module:function` strings -> callables, with errors that name what failed."""

from __future__ import annotations

import importlib


class ImportFromStringError(ValueError):
    """`str()` is a one-line message naming the setting, the module or the attribute."""


def import_from_string(path: str, setting: str):
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ImportFromStringError(f"{setting}={path!r} is not valid: use module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ImportFromStringError(
                f"{setting}={path!r}: could not import module {module_name!r} "
                "(is its folder on PYTHONPATH? in Compose, KTC_CODE_DIR is mounted there)"
            ) from None
        raise ImportFromStringError(f"{setting}={path!r}: importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise ImportFromStringError(
            f"{setting}={path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from None
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise ImportFromStringError(f"{setting}={path!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(value):
        raise ImportFromStringError(f"{setting}={path!r}: {attr!r} is not callable")
    return value

"""`module:name` strings -> objects, with errors that name what failed."""

from __future__ import annotations

import importlib

from shared.config import ConfigError


class ImportFromStringError(ConfigError):
    """A bad `module:name` setting (exit 2); `str()` is a one-line message naming the setting, the
    module or the attribute; `name` is the setting."""

    def __init__(self, message: str, name: str = ""):
        ValueError.__init__(self, message)
        self.name = name


def import_from_string(path: str, setting: str, require_callable: bool = True):
    """The attribute `path` (`module:name`) names; with `require_callable`, it must be callable."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ImportFromStringError(f"{setting}={path!r} is not valid: use module:function", setting)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ImportFromStringError(
                f"{setting}={path!r}: could not import module {module_name!r} "
                "(is its folder on PYTHONPATH? in Compose, KTC_CODE_DIR is mounted there)", setting
            ) from None
        raise ImportFromStringError(f"{setting}={path!r}: importing {module_name!r} failed: {exc}", setting) from None
    except Exception as exc:
        raise ImportFromStringError(
            f"{setting}={path!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}", setting
        ) from None
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise ImportFromStringError(f"{setting}={path!r}: module {module_name!r} has no attribute {attr!r}",
                                    setting) from None
    if require_callable and not callable(value):
        raise ImportFromStringError(f"{setting}={path!r}: {attr!r} is not callable", setting)
    return value

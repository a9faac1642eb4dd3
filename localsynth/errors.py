"""Two kinds of failure, two exit codes.

`UserError` is bad input (a config key, a path, a setting the machine cannot honour): exit
code 2 and one message that names the problem and the fix. Anything else that escapes is a
runtime failure: exit code 1.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The message says what is wrong, where, and how to fix it."""

    exit_code = 2


class MissingExtra(UserError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"the Python package '{module}' is not installed; "
            f"install it with: pip install 'localsynth[{extra}]'"
        )


def require(module: str, extra: str):
    """Import an optional heavy module, or raise a `MissingExtra` naming the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # only the module itself missing, not a broken install
        if exc.name and exc.name.split(".")[0] == module.split(".")[0]:
            raise MissingExtra(module, extra) from exc
        raise

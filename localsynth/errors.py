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
    """A dependency is not installed: one of an extra (vllm), or a core one that a partial
    install left out (torch is installed first, by hand, on CPU-only machines)."""

    def __init__(self, module: str, extra: str | None):
        fix = f"pip install 'localsynth[{extra}]'" if extra else f"pip install {module.split('.')[0]} (a dependency of localsynth)"
        super().__init__(f"the Python package '{module}' is not installed; install it with: {fix}")


def require(module: str, extra: str | None = None):
    """Import a heavy module where it is used, or raise a `MissingExtra` naming what to install:
    the pip extra that holds it, or the package itself when it is a core dependency."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # only the module itself missing, not a broken install
        if exc.name and exc.name.split(".")[0] == module.split(".")[0]:
            raise MissingExtra(module, extra) from exc
        raise

"""Optional dependencies (the extras in pyproject.toml), imported only by the command or function that needs them.

``require`` is the one way to import one: a missing package becomes one line naming what needs it and the pip
extra that installs it, e.g. "fcnseg serve needs fastapi: pip install 'fcnseg[serve]'", which the CLI prints
with exit status 2.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the pip extra that installs it."""


def require(module: str, extra: str, what: str, package: str | None = None) -> ModuleType:
    """Imports ``module`` (e.g. "matplotlib.pyplot") or says which extra installs it.

    Args:
        module: the module to import.
        extra: the pyproject extra that installs it ("serve", "onnx", "report", "tb", "sbd", "video", "hub").
        what: what needs it, for the message ("fcnseg serve", "fcnseg export", ...).
        package: the name to show when it differs from the top module (pip's "python-multipart" for "multipart").

    Returns:
        The imported module.

    Raises:
        MissingExtra: (an ImportError) ``module`` or a package it imports is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        name = package or module.split(".")[0]
        raise MissingExtra(f"{what} needs {name}: pip install 'fcnseg[{extra}]'") from e


def available(module: str) -> bool:
    """Whether ``module`` imports (it is then imported: what asks is about to use it)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True

"""fcnseg's one version number: pyproject.toml's ``[project] version``, read at runtime, in a module of its own so that
any layer can read it without importing the public API (the root package imports every layer)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

UNKNOWN = "0+unknown"


def package_version() -> str:
    """pyproject.toml's version in a source checkout (an editable install's metadata goes stale when the file
    changes); otherwise the installed distribution's (``importlib.metadata``); ``"0+unknown"`` with neither."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        text = pyproject.read_text(encoding="utf-8")
    except OSError:
        text = ""
    # Python 3.10 has no tomllib; the [project] table's name and version lines are plain enough for a pattern.
    match = re.search(r'^name\s*=\s*"fcnseg"\s*$.*?^version\s*=\s*"([^"]+)"', text, re.M | re.S)
    if match:
        return match.group(1)
    try:
        return version("fcnseg")
    except PackageNotFoundError:
        return UNKNOWN


__version__ = package_version()

"""fcnseg's version, in a module of its own so that any layer can read it without importing the public API (the
root package imports every layer). Keep it equal to pyproject.toml's."""

__version__ = "0.2.0"

"""minidni's version, in a module of its own so that any layer can read it without importing the package's top."""

__version__ = "0.4.0"

"""The package version, in a module of its own so that code inside the package can read it without importing
``ann2snn`` (which would make the importer and the package import each other)."""

__version__ = "0.1.0"

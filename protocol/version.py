"""The package version, kept in one place so the server and the plug-ins report the same."""

__version__ = "0.1.0"

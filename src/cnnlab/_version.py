"""The package version, in the bottom layer so every module can record it without importing the public face."""

__version__ = "0.1.0"

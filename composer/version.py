"""composer's own version: what image labels and records call composer_version."""

__version__ = "0.1.0"

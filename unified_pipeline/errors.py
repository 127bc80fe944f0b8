"""Errors a user can act on: each names the file, row or field at fault."""
from __future__ import annotations


class PipelineError(Exception):
    """Base class; the CLI prints these as one line instead of a traceback."""

    hint: str | None = None

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint:
            self.hint = hint


class DatasetError(PipelineError):
    """A raw dataset cannot be read: bad layout, undecodable file, missing column."""


class ConfigError(PipelineError):
    """A preset or run configuration value is invalid."""


class IntegrityError(PipelineError):
    """A stored artefact does not match its recorded checksum."""

"""Errors that end a command with one actionable line and a documented exit code."""

from __future__ import annotations

# Exit codes are part of the CLI contract (README, "Exit codes"); CI pipelines branch on them.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # bad input: flags, files, names
EXIT_NOT_FOUND = 3  # unknown run, name or record
EXIT_CONFLICT = 4  # the extras cannot be locked on top of the upstream pins
EXIT_REGISTRY = 5  # registry unreachable, unauthorised or answering errors
EXIT_BUILD = 6  # the image build failed
EXIT_VERIFY = 7  # what the registry holds does not match what was recorded
EXIT_ENVIRONMENT = 8  # a tool composer needs (Docker engine, BuildKit, uv) is missing
EXIT_STALE = 10  # rebuild --dry-run: something is stale (nothing was built)


class ComposerError(Exception):
    """An error a user can act on: `message` says what is wrong, `hint` how to fix it."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message}; {self.hint}"
        return " ".join(text.split())  # never more than one line, whatever was embedded


class UsageError(ComposerError):
    exit_code = EXIT_USAGE


class NotFoundError(ComposerError):
    exit_code = EXIT_NOT_FOUND


class LockConflictError(ComposerError):
    exit_code = EXIT_CONFLICT


class RegistryError(ComposerError):
    exit_code = EXIT_REGISTRY


class BuildError(ComposerError):
    exit_code = EXIT_BUILD


class VerificationError(ComposerError):
    exit_code = EXIT_VERIFY


class EnvironmentProblem(ComposerError):
    exit_code = EXIT_ENVIRONMENT

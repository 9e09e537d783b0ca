"""Resolve secret names (``jobwire.contracts.secrets.SecretName``) to their values.

A mounted file wins over an environment variable: Kubernetes secrets are
mounted as files, and a file is not inherited by every child process.
Values are returned as ``SecretStr`` so that they print as ``**********``
if they ever reach a log line or a repr.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

ENV_PREFIX = "JOBWIRE_SECRET_"


class SecretNotFound(LookupError):
    """A definition names a secret this instance cannot find."""

    def __init__(self, name: str, file: Path | None, variable: str) -> None:
        where = f"mount the file {file} or set {variable}" if file else f"set {variable}"
        super().__init__(f"secret {name!r} not found: {where}")
        self.name = name


def variable_name(name: str) -> str:
    """``kafka-password`` → ``JOBWIRE_SECRET_KAFKA_PASSWORD``."""
    return ENV_PREFIX + name.upper().replace("-", "_")


class Secrets:
    """The secrets one service instance can see."""

    def __init__(self, directory: Path | None, environ: Mapping[str, str]) -> None:
        self._directory = directory
        self._environ = environ

    def resolve(self, name: str) -> SecretStr:
        """The value of secret ``name``; :class:`SecretNotFound` naming both places if absent."""
        file = self._directory / name if self._directory is not None else None
        if file is not None and file.is_file():
            # A trailing newline is how `echo` and most editors write a file.
            return SecretStr(file.read_text(encoding="utf-8").rstrip("\r\n"))
        variable = variable_name(name)
        value = self._environ.get(variable)
        if value is None:
            raise SecretNotFound(name, file, variable)
        return SecretStr(value)

    def optional(self, name: str | None) -> SecretStr | None:
        return None if name is None else self.resolve(name)

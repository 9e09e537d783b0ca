"""Secret references: how a job definition names a credential without holding it.

A definition (stored in PostgreSQL, mirrored to NATS, shown in the admin API)
carries only the secret's *name*. The service that needs the value resolves the
name where it runs — a mounted file or an environment variable — so a password
is never stored, logged or put in an event.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")


def _secret_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"secret name {value!r} is not valid: use lower-case letters, digits, '_' or '-' "
            "(it names a file under the secrets directory and an environment variable)"
        )
    return value


SecretName = Annotated[
    str,
    AfterValidator(_secret_name),
    Field(
        description="Name of a secret resolved where the listener runs: the file "
        "`<secrets dir>/<name>` or the variable `JOBWIRE_SECRET_<NAME>` "
        "(upper-cased, '-' as '_'). Never the secret itself.",
        json_schema_extra={"pattern": _NAME.pattern},
    ),
]

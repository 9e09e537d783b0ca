"""The one exception contracts raise besides ``pydantic.ValidationError``."""

from __future__ import annotations


class ContractError(ValueError):
    """Input refused for a reason that is not a model's field validation.

    Raised, for example, when a job names a type no parameter model is
    registered for. ``field`` is the dotted path of the offending input
    (``"type"``), ``message`` says what is wrong and what would be accepted.
    Being a ``ValueError``, like ``pydantic.ValidationError``, it can be caught
    together with validation errors when rejecting input as a whole.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

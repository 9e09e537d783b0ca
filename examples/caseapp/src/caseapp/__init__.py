"""caseapp: a sample case-management application database for jobwire's maintenance workers.

Schema ``caseapp`` (customers, cases and their tasks, comments, attachments'
metadata and conversation emails), a generator of realistic volumes and
:class:`Churn`, which writes a realistic mix of changes to it.
"""

from __future__ import annotations

from caseapp.churn import Change, Churn
from caseapp.generate import generate
from caseapp.model import SCHEMA, TABLES, CaseStatus, ChangeKind, EmailDirection, TaskState
from caseapp.schema import count_rows, drop, install

__all__ = [
    "SCHEMA",
    "TABLES",
    "CaseStatus",
    "Change",
    "ChangeKind",
    "Churn",
    "EmailDirection",
    "TaskState",
    "count_rows",
    "drop",
    "generate",
    "install",
]

"""The sample application's vocabulary of states and tables, shared by SQL and Python."""

from __future__ import annotations

from enum import StrEnum

SCHEMA = "caseapp"

# Parents before children: the order to create and fill them in.
TABLES = ("customers", "cases", "tasks", "comments", "attachments", "emails")


def sql_literal(value: str) -> str:
    """One of our constants as an SQL literal (never input: input goes in parameters)."""
    return "'" + value.replace("'", "''") + "'"


class CaseStatus(StrEnum):
    OPEN = "open"
    PENDING = "pending"
    CLOSED = "closed"


class TaskState(StrEnum):
    TODO = "todo"
    DOING = "doing"
    DONE = "done"


class EmailDirection(StrEnum):
    SENT = "sent"
    RECEIVED = "received"


class ChangeKind(StrEnum):
    """What one :meth:`caseapp.churn.Churn.step` writes."""

    INSERT_CASE = "insert_case"
    UPDATE_CASE = "update_case"
    DELETE_CASE = "delete_case"
    UPDATE_TASK = "update_task"
    INSERT_COMMENT = "insert_comment"
    DELETE_COMMENT = "delete_comment"
    CLOSE_CASE = "close_case"

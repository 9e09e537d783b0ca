"""The README's promises that code can check."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from jobwire.runtime.settings import ServiceSettings, settings_table

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_commands() -> None:
    opening = README[:1500]
    assert "make run" in opening
    assert "make test" in opening


def test_every_kit_setting_is_documented_with_its_default() -> None:
    for variable, default, description in settings_table(ServiceSettings):
        row = f"| `{variable}` | {default} | {description} |"
        assert row in README, (
            f"README lacks or misstates {variable}; run python -m jobwire.runtime.settings"
        )


@pytest.mark.parametrize(
    ("module", "name", "prefix"),
    [
        ("jobwire.scheduler.settings", "SchedulerSettings", "JOBWIRE_SCHEDULER__"),
        ("jobwire.listeners.settings", "ListenersSettings", "JOBWIRE_LISTENERS__"),
        ("jobwire.mailer.settings", "MailerSettings", "JOBWIRE_MAILER__"),
        ("jobwire.search_sync.settings", "SearchSyncSettings", "JOBWIRE_SEARCH__"),
    ],
)
def test_every_service_setting_is_documented(module: str, name: str, prefix: str) -> None:
    settings = getattr(importlib.import_module(module), name)
    for variable, default, description in settings_table(settings):
        if variable.startswith(prefix):
            assert f"| `{variable}` | {default} | {description} |" in README, variable

"""The README's promises that code can check."""

from __future__ import annotations

from pathlib import Path

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


def test_every_scheduler_setting_is_documented() -> None:
    from jobwire.scheduler.settings import SchedulerSettings

    for variable, default, description in settings_table(SchedulerSettings):
        if variable.startswith("JOBWIRE_SCHEDULER__"):
            assert f"| `{variable}` | {default} | {description} |" in README, variable


def test_every_listeners_setting_is_documented() -> None:
    from jobwire.listeners.settings import ListenersSettings

    for variable, default, description in settings_table(ListenersSettings):
        if variable.startswith("JOBWIRE_LISTENERS__"):
            assert f"| `{variable}` | {default} | {description} |" in README, variable

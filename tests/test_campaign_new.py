"""``bulletin campaign new ID --from PREVIOUS``: the next round from the last one's file, its
comments and order kept, and a file ``check`` accepts."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import load_config

PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "config"


def _config(tmp_path) -> Path:
    folder = tmp_path / "config"
    shutil.copytree(PROJECT_CONFIG, folder)
    return folder


def test_the_next_round_a_year_on(tmp_path):
    config = _config(tmp_path)
    result = CliRunner().invoke(app, ["campaign", "new", "energy-week-2024", "--from", "energy-week-2023",
                                      "--config", str(config)])
    assert result.exit_code == 0, result.output
    old, new = load_config(config, "energy-week-2023").campaign, load_config(config, "energy-week-2024").campaign
    for name in ("opens_at", "deadline_at", "compile_moment"):
        assert getattr(new.calendar, name) == getattr(old.calendar, name).replace(year=2024)
    assert (new.previous, new.bulletin.issue) == ("energy-week-2023", old.bulletin.issue + 1)
    assert new.name == old.name.replace("2023", "2024") and new.bulletin.title == old.bulletin.title.replace("2023", "2024")
    assert (new.form, new.calendar.reminders, new.bulletin.approvers) == (old.form, old.calendar.reminders,
                                                                         old.bulletin.approvers)
    old_text = (config / "campaigns" / "energy-week-2023.yaml").read_text(encoding="utf-8")
    new_text = (config / "campaigns" / "energy-week-2024.yaml").read_text(encoding="utf-8")
    comments = [line for line in old_text.splitlines() if line.lstrip().startswith("#")]
    assert comments == [line for line in new_text.splitlines() if line.lstrip().startswith("#")]
    assert len(old_text.splitlines()) == len(new_text.splitlines())  # only values changed, in place
    assert CliRunner().invoke(app, ["check", "energy-week-2024", "--config", str(config)]).exit_code == 0
    again = CliRunner().invoke(app, ["campaign", "new", "energy-week-2024", "--from", "energy-week-2023",
                                     "--config", str(config)])
    assert again.exit_code == 2 and "已存在" in again.output and new_text == (
        config / "campaigns" / "energy-week-2024.yaml").read_text(encoding="utf-8")


def test_opening_on_a_given_day_keeps_every_interval(tmp_path):
    config = _config(tmp_path)
    result = CliRunner().invoke(app, ["campaign", "new", "energy-week-2024", "--from", "energy-week-2023",
                                      "--opens", "2024-09-16", "--config", str(config)])
    assert result.exit_code == 0, result.output
    old, new = (load_config(config, c).campaign.calendar for c in ("energy-week-2023", "energy-week-2024"))
    assert new.opens_at.date() == dt.date(2024, 9, 16) and new.opens_at.time() == old.opens_at.time()
    assert new.deadline_at - new.opens_at == old.deadline_at - old.opens_at
    assert new.compile_moment - new.opens_at == old.compile_moment - old.opens_at


def test_bad_arguments_write_nothing(tmp_path):
    config = _config(tmp_path)
    for args in (["Bad_ID", "--from", "energy-week-2023"], ["energy-week-2024", "--from", "nowhere"],
                 ["energy-week-2024", "--from", "energy-week-2023", "--opens", "16/9/2024"]):
        result = CliRunner().invoke(app, ["campaign", "new", *args, "--config", str(config)])
        assert result.exit_code == 2, result.output
    assert sorted(p.name for p in (config / "campaigns").glob("*.yaml")) == sorted(
        p.name for p in (PROJECT_CONFIG / "campaigns").glob("*.yaml"))

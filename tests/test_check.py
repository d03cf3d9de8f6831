"""``bulletin check``: every flaw at once, each with its file, line, key and reason; templates
rendered with sample data; the mail settings present complete. Exit 2 on any error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.check import yaml_line
from flows.cli import app

PROJECT_CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture
def config(tmp_path, monkeypatch):
    for name in ("BULLETIN_SMTP_HOST", "BULLETIN_SMTP_USER", "BULLETIN_SMTP_PASSWORD", "BULLETIN_IMAP_HOST",
                 "BULLETIN_IMAP_USER", "BULLETIN_IMAP_PASSWORD", "BULLETIN_MAIL_FROM"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "config"
    shutil.copytree(PROJECT_CONFIG, folder)
    return folder


def _check(config: Path, *args: str):
    return CliRunner().invoke(app, ["check", *args, "--config", str(config)])


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_the_shipped_configuration_passes(config):
    result = _check(config)
    assert result.exit_code == 0, result.output
    assert "配置检查通过" in result.output and "energy-week-2023" in result.output


def test_every_flaw_at_once_with_file_line_and_key(config, monkeypatch):
    units, campaign = config / "units.yaml", config / "campaigns" / "energy-week-2023.yaml"
    _edit(units, "shenyang-jieneng@example.org", "not-an-address")  # units.0.contacts.0.email
    _edit(units, 'code: "210200"', 'code: "210100"')  # a code twice
    _edit(campaign, "distribution: [leaders, peers, units, press]", "distribution: [leaders, nobody]")
    _edit(campaign, 'rule: "participants >= trainings"', 'rule: "participants >= ghosts"')
    (config / "campaigns" / "energy-week-2023").mkdir()
    (config / "campaigns" / "energy-week-2023" / "templates").mkdir()
    (config / "campaigns" / "energy-week-2023" / "templates" / "notice.txt.j2").write_text("{{ nothing_like_this }}")
    monkeypatch.setenv("BULLETIN_SMTP_HOST", "smtp.example.gov.cn")
    monkeypatch.setenv("BULLETIN_SMTP_USER", "reports@example.gov.cn")
    monkeypatch.setenv("BULLETIN_IMAP_HOST", "imap.example.gov.cn")
    result = _check(config, "energy-week-2023")
    assert result.exit_code == 2
    out = result.output
    assert f"{units}:{yaml_line(units, 'units.0.contacts.0.email')}: units.0.contacts.0.email:" in out
    assert "units.1.code: unit code '210100' appears twice" in out
    # the units' flaws stop the campaign's cross-checks; fixed, the campaign's own come out all at once
    _edit(units, "not-an-address", "shenyang-jieneng@example.org")
    _edit(units, 'code: "210100"\n    name: 大连市', 'code: "210200"\n    name: 大连市')
    out = _check(config, "energy-week-2023").output
    line = yaml_line(campaign, "bulletin.distribution.1")
    assert f"{campaign}:{line}: bulletin.distribution.1: unknown list 'nobody'" in out
    assert "form.checks.0.rule: unknown field(s) ghosts" in out
    assert "BULLETIN_SMTP_PASSWORD" in out and "BULLETIN_IMAP_USER" in out and "BULLETIN_IMAP_PASSWORD" in out
    assert "5 处错误" in out
    # a campaign that loads has its templates rendered with sample data
    _edit(campaign, "distribution: [leaders, nobody]", "distribution: [leaders, peers, units, press]")
    _edit(campaign, 'rule: "participants >= ghosts"', 'rule: "participants >= trainings"')
    out = _check(config, "energy-week-2023").output
    assert "templates (notice)" in out and "nothing_like_this" in out and "4 处错误" in out


def test_a_yaml_syntax_error_names_its_line(config):
    lists = config / "lists.yaml"
    lines = lists.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3] + " ]["
    lists.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _check(config)
    assert result.exit_code == 2 and f"{lists}:4:" in result.output and "YAML syntax" in result.output


def test_yaml_line_follows_keys_and_indices(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("a:\n  b:\n    - x\n    - {c: 1,\n       d: 2}\n", encoding="utf-8")
    assert [yaml_line(path, k) for k in ("a", "a.b", "a.b.1", "a.b.1.d", "a.b.9", "zz")] == [1, 2, 4, 5, 2, 1]

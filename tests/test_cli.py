"""The `bulletin` command as a user runs it: help, exit codes, status --json, the demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.context import PROJECT_ROOT

BIN = Path(sys.executable).parent / "bulletin"
COMMANDS = ["demo", "request", "remind", "collect", "status", "review", "compile", "approve", "send", "upgrade",
            "serve"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "BULLETIN_"))}
    return {**env, **extra}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example_and_is_in_the_readme(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: bulletin" in result.output
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"bulletin {command}" in readme


def test_bad_config_exits_2_naming_file_key_and_reason(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    path = config / "campaigns" / "energy-week-2023.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("distribution: [leaders,", "distribution: [bosses,"),
                    encoding="utf-8")
    result = CliRunner().invoke(app, ["status", "energy-week-2023", "--config", str(config),
                                      "--home", str(tmp_path / "home")])
    assert result.exit_code == 2
    assert "energy-week-2023.yaml" in result.output and "bulletin.distribution.0" in result.output
    assert "bosses" in result.output


def test_unknown_campaign_and_bad_now_exit_2(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["status", "no-such-campaign", "--home", str(tmp_path)]).exit_code == 2
    assert runner.invoke(app, ["status", "energy-week-2023", "--home", str(tmp_path),
                               "--now", "yesterday"]).exit_code == 2


def test_status_json_on_an_empty_ledger(tmp_path):
    out = subprocess.run([str(BIN), "status", "energy-week-2023", "--json", "--home", str(tmp_path),
                          "--config", str(PROJECT_ROOT / "config"), "--now", "2023-09-20T10:00:00+08:00"],
                         env=_env(), capture_output=True,
                         text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)  # JSON alone on stdout
    assert status["campaign"] == "energy-week-2023" and status["expected"] == 24
    assert status["missing"] == [u["code"] for u in status["units"]]
    assert status["latest_bulletin"] is None
    assert not (tmp_path / "prefect").exists(), "status must not start Prefect"


def test_demo_refuses_a_non_empty_home(tmp_path):
    (tmp_path / "something").write_text("x")
    assert CliRunner().invoke(app, ["demo", "--home", str(tmp_path)]).exit_code == 2


def test_demo_runs_a_whole_campaign(tmp_path):
    home = tmp_path / "demo"
    out = subprocess.run([str(BIN), "demo", "--home", str(home)], env=_env(), capture_output=True,
                         text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[失败]" not in out.stdout and "应报24家" in out.stdout
    folder = home / "bulletins" / "energy-week-2023" / "v1"
    for name in ("bulletin.html", "bulletin.txt", "bulletin.md", "bulletin.docx"):
        assert (folder / name).stat().st_size > 0
    status = json.loads(subprocess.run([str(BIN), "status", "energy-week-2023", "--json", "--home", str(home),
                                        "--config", str(PROJECT_ROOT / "config")],
                                       env=_env(), capture_output=True, text=True, cwd=tmp_path).stdout)
    assert status["accepted"] == 23 and status["latest_bulletin"]["approved"] is True
    # 沈阳市's own round reads as a city's: 全市, 各区县, never 全省
    city = (home / "levels" / "shenyang" / "bulletins" / "shenyang-2023" / "v1" / "bulletin.txt").read_text(encoding="utf-8")
    assert "全市各级公共机构共" in city and "（一）各区县" in city and "全省" not in city


def test_a_cli_run_keeps_big_config_files_parsed_in_the_home_cache(tmp_path, monkeypatch):
    """The CLI checks the config with the same disk cache as the flows: a later process reads
    a big units.yaml's parsed data instead of the YAML."""
    import tasks.core.config as config_module
    monkeypatch.setattr(config_module, "_DISK_CACHE_MIN_CHARS", 0)
    monkeypatch.setattr(config_module, "_RACY_NS", 0)
    monkeypatch.setattr(config_module, "_loaded", {})
    config = tmp_path / "config"
    shutil.copytree(PROJECT_ROOT / "config", config)
    home = tmp_path / "home"
    result = CliRunner().invoke(app, ["status", "energy-week-2023", "--json", "--config", str(config),
                                      "--home", str(home), "--now", "2023-09-20T10:00:00+08:00"])
    assert result.exit_code == 0, result.output
    assert [p.name.split("-")[0] for p in (home / "cache" / "config").glob("units.yaml-*.jsonl")] == ["units.yaml"]


@pytest.mark.usefixtures("prefect_harness")
def test_approve_sends_the_version_it_names_once(tmp_path, config, config_dir, smtp_env, capsys):
    """With no run waiting, `bulletin approve` sends the approved version itself; an older
    version cannot be approved any more; a later `bulletin send` sends nothing new. (The
    commands' functions are called in this process, under the test's Prefect server.)"""
    import datetime as dt

    import typer

    from flows import cli
    from tasks.bulletin.compile import compile_bulletin
    from tasks.core.ledger import Ledger
    from tasks.mail.notices import bulletin_recipients
    now = dt.datetime(2023, 10, 9, 9, tzinfo=config.campaign.calendar.tz)
    for lead in ("初稿导语", "更正后的导语"):
        compile_bulletin(Ledger(tmp_path), config, now, lead=lead)
    common = dict(home=tmp_path, config=config_dir, now=now.isoformat())

    def run(command, *args, **options) -> tuple[int, dict | None, str]:
        capsys.readouterr()
        with pytest.raises(typer.Exit) as exit_:
            command("energy-week-2023", *args, **options, **common)
        out = capsys.readouterr()
        lines = [line for line in out.out.splitlines() if line.startswith("{")]
        return exit_.value.exit_code, json.loads(lines[-1]) if lines else None, out.err

    code, checked, err = run(cli.approve, by="李科长", note="数据已核")  # the demo campaign's 审核, then 签发
    assert code == 0 and checked["approval"] == "pending" and "send" not in checked, err
    code, approved, err = run(cli.approve, by="王处长", note="同意印发第二版")
    assert code == 0, err
    recipients = len(bulletin_recipients(config))
    assert (approved["version"], approved["approval"], approved["send"]["sent"]) == (2, "approved", recipients)
    assert len(smtp_env.messages) == recipients + 1  # and the 签发 level's approval request
    code, _, err = run(cli.approve, by="王处长", version=1)
    assert code == 1 and "第1版已被第2版取代" in err
    code, sent, err = run(cli.send)
    assert code == 0, err
    assert sent.get("sent", 0) == 0 and len(smtp_env.messages) == recipients + 1

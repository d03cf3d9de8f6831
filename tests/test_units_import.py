"""``bulletin units import``: the office's roster (a real .xlsx with a title row, merged cells
and a unit with two contacts; a GBK .csv) against units.yaml: the difference shown, bad rows
reported by row and never written, units.yaml rewritten only with --write, its comments, order
and untouched fields kept, and still accepted by ``check``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openpyxl
import yaml
from typer.testing import CliRunner

from flows.cli import app

STARTER = Path(__file__).resolve().parent.parent / "templates" / "starter" / "config"


def _roster(path: Path) -> Path:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["2027年报送单位名单"])
    ws.append(["序号", "单位名称", "单位代码", "单位类型", "联系人", "电子邮箱", "联系电话", "分管领导", "分管领导邮箱"])
    ws.append([1, "沈阳市机关事务管理局", "210100", "市", "张伟", "new-shenyang@example.org", "024-1234", "王局",
               "wang@example.org"])
    ws.append([None, None, None, None, "刘洋", "liu@example.org", None, None, None])
    for cols in ("B3:B4", "C3:C4", "D3:D4", "H3:H4", "I3:I4"):
        ws.merge_cells(cols)
    ws.append([2, "省卫生健康委", "", "部门", "赵敏", "zhao@example.org", "", "", ""])
    ws.append([3, "大连市", "210200", "外星", "某某", "a@example.org", "", "", ""])
    ws.append([4, "锦州市", "210700", "市", "某某", "not-an-email", "", "", ""])
    wb.save(path)
    return path


def _import(config: Path, roster: Path, *flags: str):
    result = CliRunner().invoke(app, ["units", "import", str(roster), *flags, "--config", str(config)])
    return result, json.loads(result.output.strip().splitlines()[-1])


def test_the_difference_then_the_write(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(STARTER, config)
    units = config / "units.yaml"
    before = units.read_text(encoding="utf-8")
    result, summary = _import(config, _roster(tmp_path / "名单.xlsx"))
    assert result.exit_code == 1  # rows were left out
    assert summary == {"units": 2, "added": 1, "changed": 1, "missing": 1, "bad_rows": 2, "written": False}
    assert "第6行（大连市）：单位类型“外星”" in result.output and "第7行（锦州市）：“not-an-email”不是电子邮箱" in result.output
    assert units.read_text(encoding="utf-8") == before  # shown, not written

    result, summary = _import(config, tmp_path / "名单.xlsx", "--write")
    assert summary["written"] is True
    written = units.read_text(encoding="utf-8")
    assert written.splitlines()[:8] == before.splitlines()[:8]  # the opening comments kept
    data = yaml.safe_load(written)["units"]
    assert [u["code"] for u in data] == ["210100", "SZ001", "U0001"]  # the file's order, new ones after
    shenyang = data[0]
    assert shenyang["contacts"] == [
        {"name": "张伟", "email": "new-shenyang@example.org", "title": "节能工作联络员", "phone": "024-1234"},
        {"name": "刘洋", "email": "liu@example.org"}]
    assert shenyang["supervisor"] == {"name": "王局", "email": "wang@example.org"}
    assert shenyang["aliases"] == ["沈阳市", "沈阳"]  # untouched fields kept
    assert data[2]["name"] == "省卫生健康委" and data[2]["kind"] == "department"
    assert "大连市" not in written and "锦州市" not in written
    assert CliRunner().invoke(app, ["check", "--config", str(config)]).exit_code == 0


def test_a_gbk_csv_roster(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(STARTER, config)
    roster = tmp_path / "名单.csv"
    roster.write_text("单位,代码,联系人,邮箱\n省教育厅,SZ001,李静,new-jiaoyu@example.org\n", encoding="gbk")
    result, summary = _import(config, roster, "--write")
    assert result.exit_code == 0, result.output
    assert summary == {"units": 1, "added": 0, "changed": 1, "missing": 1, "bad_rows": 0, "written": True}
    jiaoyu = yaml.safe_load((config / "units.yaml").read_text(encoding="utf-8"))["units"][1]
    assert jiaoyu["contacts"] == [{"name": "李静", "email": "new-jiaoyu@example.org", "title": "节能工作联络员"}]

"""Configuration loading (tasks/core/config.py): the bundled campaign loads; every flaw raises a
ConfigError naming the file, the key and the reason. Broken configs are copies of config/
edited as YAML text."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from tasks.core.config import ConfigError, load_config, parse_offset
from tasks.core.unit_list import UnitList

CAMPAIGN = "energy-week-2023"
CAMPAIGN_FILE = f"campaigns/{CAMPAIGN}.yaml"
ROOT_CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture
def cfg_copy(tmp_path, config_dir) -> Path:
    target = tmp_path / "config"
    shutil.copytree(config_dir, target)
    return target


def edit(directory: Path, rel: str, old: str, new: str) -> Path:
    """Replace the first occurrence of ``old`` (which must be present) in a config file."""
    path = directory / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def load_error(directory: Path, campaign: str = CAMPAIGN) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(directory, campaign)
    err = info.value
    # the message itself carries file, key and reason (the CLI prints it)
    assert err.file in str(err) and err.reason in str(err)
    if err.key:
        assert err.key in str(err)
    return err


# ---------------------------------------------------------------- the bundled config
def test_bundled_config_loads(config):
    assert config.campaign.id == CAMPAIGN
    assert len(config.units) == 24
    assert len({u.code for u in config.units}) == 24
    kinds = {u.kind for u in config.units}
    assert kinds == {"city", "zone", "department"}
    form = config.campaign.form
    keys = [f.key for f in form.fields]
    assert keys[:3] == ["posters", "signs", "banners"]
    assert {"participants", "trainings", "activities", "highlights"} <= set(keys)
    assert len(form.counts) == 12 and len(form.texts) == 2
    assert form.field("posters").label == "张贴宣传画" and form.field("posters").unit == "套"
    assert form.field("participants").required is False
    assert form.field("activities").kind == "text" and form.field("activities").max_length == 2000
    assert set(config.campaign.bulletin.distribution) <= set(config.lists)
    cal = config.campaign.calendar
    assert cal.opens_at < cal.deadline_at <= cal.closes_at
    assert cal.deadline_at.utcoffset() == timedelta(hours=8)
    assert config.unit_by_code["210100"].name == "沈阳市"


def test_copy_of_bundled_config_loads(cfg_copy):
    assert len(load_config(cfg_copy, CAMPAIGN).units) == 24


def test_campaign_given_as_path(cfg_copy):
    config = load_config(cfg_copy, str(cfg_copy / CAMPAIGN_FILE))
    assert config.campaign.id == CAMPAIGN


@pytest.mark.parametrize("text, expected", [("-3d", timedelta(days=-3)), ("0d", timedelta(0)),
                                            ("+12h", timedelta(hours=12)), ("30m", timedelta(minutes=30))])
def test_parse_offset(text, expected):
    assert parse_offset(text) == expected


@pytest.mark.parametrize("bad", ["3 days", "d", "-3w", "", "1.5d"])
def test_parse_offset_rejects(bad):
    with pytest.raises(ValueError):
        parse_offset(bad)


# ---------------------------------------------------------------- YAML syntax
@pytest.mark.parametrize("rel, old, new, bad_line_text", [
    (CAMPAIGN_FILE, "units: all", "units: all: bad", "units: all: bad"),
    ("units.yaml", "    name: 沈阳市", "    name: 沈阳市: 市", "    name: 沈阳市: 市"),
    ("lists.yaml", "    title: 省局领导", "    title: 省局: 领导", "    title: 省局: 领导"),
])
def test_yaml_syntax_error_names_file_and_line(cfg_copy, rel, old, new, bad_line_text):
    path = edit(cfg_copy, rel, old, new)
    line = path.read_text(encoding="utf-8").splitlines().index(bad_line_text) + 1
    err = load_error(cfg_copy)
    assert Path(err.file).name == Path(rel).name
    assert err.key.startswith(f"line {line},")
    assert "YAML" in err.reason


def test_file_not_found(cfg_copy):
    (cfg_copy / "lists.yaml").unlink()
    err = load_error(cfg_copy)
    assert Path(err.file).name == "lists.yaml"
    assert "not found" in err.reason


def test_unknown_campaign_file(cfg_copy):
    err = load_error(cfg_copy, "energy-week-2099")
    assert err.file.endswith("energy-week-2099.yaml")
    assert "not found" in err.reason


# ---------------------------------------------------------------- bad values, one per case
CAL_BLOCK_START = "calendar:\n  timezone: Asia/Shanghai"


@pytest.mark.parametrize("rel, old, new, file_name, key, reason_has", [
    # a required key missing: a campaign without calendar
    (CAMPAIGN_FILE, CAL_BLOCK_START, "calendar_gone:\n  timezone: Asia/Shanghai",
     CAMPAIGN_FILE, "calendar", "required"),
    # a required key missing: a unit without name
    ("units.yaml", "    name: 沈阳市\n", "", "units.yaml", "units.0.name", "required"),
    # bad email addresses, in each file
    (CAMPAIGN_FILE, "energy-office@example.com", "energy-office-at-example.com",
     CAMPAIGN_FILE, "coordinators.0.email", "energy-office-at-example.com"),
    ("units.yaml", "shenyang-jieneng@example.org", "shenyang jieneng@example.org",
     "units.yaml", "units.0.contacts.0.email", "not an email"),
    ("lists.yaml", "director@example.com", "director.example.com",
     "lists.yaml", "lists.leaders.members.0.email", "director.example.com"),
    # a duplicate unit code
    ("units.yaml", 'code: "210200"', 'code: "210100"', "units.yaml", "units.1.code", "appears twice"),
    # a list in bulletin.distribution that lists.yaml does not have
    (CAMPAIGN_FILE, "distribution: [leaders, peers, units, press]",
     "distribution: [leaders, peers, nobody, press]",
     CAMPAIGN_FILE, "bulletin.distribution.2", "nobody"),
    # a check rule over an unknown field (a typo) or a text field
    (CAMPAIGN_FILE, "participants >= trainings", "participants >= trainingz",
     CAMPAIGN_FILE, "form.checks.0.rule", "trainingz"),
    (CAMPAIGN_FILE, "participants >= trainings", "participants >= activities",
     CAMPAIGN_FILE, "form.checks.0.rule", "activities"),
    # calendar order wrong: deadline after closes; opens after deadline
    (CAMPAIGN_FILE, "deadline: 2023-09-28T17:00:00", "deadline: 2023-10-28T17:00:00",
     CAMPAIGN_FILE, "calendar", "opens < deadline <= closes"),
    (CAMPAIGN_FILE, "opens: 2023-09-18T09:00:00", "opens: 2023-09-29T09:00:00",
     CAMPAIGN_FILE, "calendar", "opens < deadline <= closes"),
    # an id that differs from the file name
    (CAMPAIGN_FILE, "name: 2023年辽宁", "id: other-campaign\nname: 2023年辽宁",
     CAMPAIGN_FILE, "id", "other-campaign"),
    # other flaws
    (CAMPAIGN_FILE, "timezone: Asia/Shanghai", "timezone: Mars/Olympus",
     CAMPAIGN_FILE, "calendar.timezone", "Mars/Olympus"),
    (CAMPAIGN_FILE, "units: all", "units: ['210100', '999999']", CAMPAIGN_FILE, "units.1", "999999"),
    (CAMPAIGN_FILE, "offset: -3d", "offset: three days", CAMPAIGN_FILE,
     "calendar.reminders.0.offset", "three days"),
    (CAMPAIGN_FILE, "significant_figures: 3", "significant_figures: 0", CAMPAIGN_FILE,
     "bulletin.significant_figures", ""),
    (CAMPAIGN_FILE, "max_mail_bytes: 10485760", "max_mail_bytes: 10485760\n  colour: red",
     CAMPAIGN_FILE, "bulletin.colour", ""),
    (CAMPAIGN_FILE, "{key: signs,", "{key: posters,", CAMPAIGN_FILE, "form", "posters"),
    ("units.yaml", "    kind: city\n", "    kind: town\n", "units.yaml", "units.0.kind", ""),
    ("lists.yaml", "role: 报", "role: 抄", "lists.yaml", "lists.leaders.role", ""),
])
def test_config_error_names_file_key_reason(cfg_copy, rel, old, new, file_name, key, reason_has):
    edit(cfg_copy, rel, old, new)
    err = load_error(cfg_copy)
    assert Path(err.file) == cfg_copy / file_name
    assert err.key == key
    assert err.reason
    assert reason_has in err.reason


def test_campaign_id_with_uppercase_in_file_name(cfg_copy):
    upper = cfg_copy / "campaigns" / "Energy-Week-2023.yaml"
    (cfg_copy / CAMPAIGN_FILE).rename(upper)
    err = load_error(cfg_copy, str(upper))
    assert Path(err.file) == upper
    assert err.key == "id"
    assert "lowercase" in err.reason and "Energy-Week-2023" in err.reason


def test_campaign_id_with_uppercase_as_argument(cfg_copy):
    err = load_error(cfg_copy, "Energy-Week-2023")
    assert err.key == "Energy-Week-2023"
    assert "lowercase" in err.reason
    assert Path(err.file) == cfg_copy / "campaigns"


def test_campaign_file_not_a_mapping(cfg_copy):
    (cfg_copy / CAMPAIGN_FILE).write_text("- just\n- a list\n", encoding="utf-8")
    err = load_error(cfg_copy)
    assert Path(err.file) == cfg_copy / CAMPAIGN_FILE
    assert err.reason


def test_calendar_mixing_naive_and_aware_times(cfg_copy):
    """Naive times are in the campaign's timezone; an explicit offset is kept."""
    edit(cfg_copy, CAMPAIGN_FILE, "deadline: 2023-09-28T17:00:00", "deadline: 2023-09-28T10:00:00+01:00")
    cal = load_config(cfg_copy, "energy-week-2023").campaign.calendar
    assert cal.deadline_at.astimezone(cal.tz).hour == 17 and cal.opens_at < cal.deadline_at


def test_calendar_mixed_and_out_of_order_is_a_config_error(cfg_copy):
    edit(cfg_copy, CAMPAIGN_FILE, "deadline: 2023-09-28T17:00:00", "deadline: 2023-09-18T08:00:00+08:00")
    err = load_error(cfg_copy)
    assert err.key.startswith("calendar") and "opens < deadline" in err.reason


@pytest.mark.parametrize("rule", ["participants >= ", "participants trainings", "participants = trainings",
                                  "participants >> trainings"])
def test_check_rule_that_is_not_an_expression(cfg_copy, rule):
    edit(cfg_copy, CAMPAIGN_FILE, '"participants >= trainings"', f'"{rule}"')
    err = load_error(cfg_copy)
    assert err.key == "form.checks.0.rule"


# ---------------------------------------------------------------- loaded once per process
@pytest.fixture
def settled(monkeypatch):
    """Treat files as settled however recently they were written (copies made by the test)."""
    import tasks.core.config as config_module
    monkeypatch.setattr(config_module, "_RACY_NS", 0)
    monkeypatch.setattr(config_module, "_loaded", {})
    return config_module


def test_unchanged_config_is_the_same_object(cfg_copy, settled):
    first = load_config(cfg_copy, CAMPAIGN)
    assert load_config(cfg_copy, CAMPAIGN) is first
    assert load_config(str(cfg_copy), CAMPAIGN) is first  # the same arguments, spelled alike
    # a changed file is read again
    edit(cfg_copy, "lists.yaml", "    title: 省局领导", "    title: 省局主要领导")
    second = load_config(cfg_copy, CAMPAIGN)
    assert second is not first and second.lists["leaders"].title == "省局主要领导"
    assert first.lists["leaders"].title == "省局领导"  # what callers already hold stays as it was
    assert load_config(cfg_copy, CAMPAIGN) is second


def test_changed_or_removed_files_are_not_served_from_memory(cfg_copy, settled):
    load_config(cfg_copy, CAMPAIGN)
    edit(cfg_copy, "units.yaml", "    kind: city\n", "    kind: town\n")
    assert load_error(cfg_copy).key == "units.0.kind"
    shutil.copy(ROOT_CONFIG / "units.yaml", cfg_copy / "units.yaml")
    load_config(cfg_copy, CAMPAIGN)
    (cfg_copy / "campaigns" / "energy-week-2022.yaml").unlink()  # the previous campaign
    assert load_error(cfg_copy).key == "previous"


def test_recently_written_config_is_read_again(cfg_copy, monkeypatch):
    """Within the racy window a second write could leave the same stamp: no memo then."""
    import tasks.core.config as config_module
    monkeypatch.setattr(config_module, "_loaded", {})
    (cfg_copy / "lists.yaml").touch()
    assert load_config(cfg_copy, CAMPAIGN) is not load_config(cfg_copy, CAMPAIGN)


def test_shared_config_cannot_be_changed_in_place(config):
    assert isinstance(config.units, UnitList) and isinstance(config.units_all, UnitList)
    with pytest.raises(TypeError):
        config.units[0] = config.units[1]  # a UnitList has no item assignment
    with pytest.raises(Exception):
        config.campaign = config.campaign  # frozen
    with pytest.raises(Exception):
        config.units[0].name = "别的单位"  # frozen
    two = config.model_copy(update={"campaign": config.campaign.model_copy(update={"units": ["210200", "210100"]})})
    assert [u.code for u in two.units] == ["210200", "210100"] and list(two.unit_by_code) == ["210200", "210100"]
    assert len(config.units) == 24


# ---------------------------------------------------------------- parsed data kept on disk
def test_big_units_file_is_parsed_once_per_content(cfg_copy, settled, tmp_path, monkeypatch):
    monkeypatch.setattr(settled, "_DISK_CACHE_MIN_CHARS", 0)
    cache = tmp_path / "cache"
    first = load_config(cfg_copy, CAMPAIGN, cache_dir=cache)
    # the campaign file holds dates, which JSON would not give back: it is always parsed
    assert sorted(p.name.rsplit("-", 1)[0] for p in cache.iterdir()) == ["lists.yaml", "units.yaml"]
    # a new process (no memo) reads the parsed data, not the YAML: proven by editing the cache
    units_json = next(cache.glob("units.yaml-*.jsonl"))  # the validated units, one per line
    units_json.write_text(units_json.read_text(encoding="utf-8").replace("沈阳市", "沈阳市（缓存）"),
                          encoding="utf-8")
    monkeypatch.setattr(settled, "_loaded", {})
    again = load_config(cfg_copy, CAMPAIGN, cache_dir=cache)
    assert again.unit_by_code["210100"].name == "沈阳市（缓存）"
    assert [u.code for u in again.units] == [u.code for u in first.units]
    # changed YAML is a new content: parsed again, the stale entry is not used
    edit(cfg_copy, "units.yaml", "    name: 沈阳市\n", "    name: 沈阳市人民政府\n")
    assert load_config(cfg_copy, CAMPAIGN, cache_dir=cache).unit_by_code["210100"].name == "沈阳市人民政府"
    assert len(list(cache.glob("units.yaml-*.jsonl"))) == 2


def test_errors_still_name_file_key_and_reason_with_the_disk_cache(cfg_copy, settled, tmp_path, monkeypatch):
    monkeypatch.setattr(settled, "_DISK_CACHE_MIN_CHARS", 0)
    edit(cfg_copy, "units.yaml", "shenyang-jieneng@example.org", "shenyang jieneng@example.org")
    for _ in range(2):
        with pytest.raises(ConfigError) as info:
            load_config(cfg_copy, CAMPAIGN, cache_dir=tmp_path / "cache")
        err = info.value
        assert (Path(err.file), err.key) == (cfg_copy / "units.yaml", "units.0.contacts.0.email")
        assert "not an email" in err.reason
    assert not (tmp_path / "cache").exists()  # nothing kept from a configuration that failed


def test_only_data_json_gives_back_exactly_is_kept_on_disk():
    import datetime as dt

    from tasks.core.config import _as_json
    assert _as_json({"units": [{"code": "1", "aliases": []}], "n": 1.5, "ok": True}) is not None
    assert _as_json({"d": dt.date(2023, 1, 1)}) is None
    assert _as_json({1: "a"}) is None  # JSON would make the key "1"
    assert _as_json({"x": float("nan")}) is None


# ---------------------------------------------------------------- units.yaml read item by item
def test_units_file_with_anchors_flow_style_and_comments_reads_as_yaml_does(cfg_copy):
    import yaml
    text = (cfg_copy / "units.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    boss = data["units"][0]["supervisor"]
    # the same roster written another way: a shared supervisor by anchor, flow style, comments
    lines = ["# 名单", "units:"]
    for i, u in enumerate(data["units"]):
        sup = f"&boss {yaml.safe_dump(boss, default_flow_style=True, allow_unicode=True).strip()}" if i == 0 else "*boss"
        lines += [f"  - code: '{u['code']}'   # 单位代码", f"    name: {u['name']}", f"    kind: {u['kind']}",
                  f"    contacts: {yaml.safe_dump(u['contacts'], default_flow_style=True, allow_unicode=True).strip()}",
                  f"    supervisor: {sup}"]
    (cfg_copy / "units.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    units = load_config(cfg_copy, CAMPAIGN).units_all
    assert units.codes == tuple(str(u["code"]) for u in data["units"])
    assert {u.supervisor.email for u in units} == {boss["email"]}
    assert units[3].contacts[0].email == data["units"][3]["contacts"][0]["email"].lower()


@pytest.mark.parametrize(("text", "key", "reason"), [
    ("units:\n  - code: 'A1'\n    name: 甲\n    kind: city\n    contacts: [{name: 张, email: a@example.org}]\n"
     "    supervisor: {name: 李, email: b@example.org}\nother: 1\n", "other", "Extra inputs"),
    ("units: []\n", "units", "at least 1"),
    ("- code: A1\n", "", "Input should be"),
    ("units:\n  - code: 'A1'\n    name: [甲\n", "line", "YAML syntax"),
    ("units:\n  - code: 'A 1'\n    name: 甲\n    kind: town\n    contacts: []\n    supervisor: {name: 李, email: b@example.org}\n",
     "units.0.code", "letters, digits"),
])
def test_a_units_file_of_another_shape_names_what_is_wrong(cfg_copy, text, key, reason):
    (cfg_copy / "units.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_copy, CAMPAIGN)
    err = info.value
    assert err.key.startswith(key) and reason in err.reason, (err.key, err.reason)
    if key == "units.0.code":  # every problem of the unit is named, not just the first
        assert {"units.0.kind", "units.0.contacts"} <= {e.key for e in err.every}


def test_unit_list_is_compact_and_gives_units_by_code(config):
    import pickle
    units = config.units
    assert units.codes[0] == units[0].code and units.name_of(units.codes[2]) == units[2].name
    assert units.kind_of(units.codes[2]) == units[2].kind
    assert list(config.unit_by_code) == list(units.codes) and len(config.unit_by_code) == len(units)
    assert "no-such-unit" not in config.unit_by_code and config.unit_by_code.get("no-such-unit") is None
    assert units[2] in units and units[1:3].codes == units.codes[1:3]
    assert pickle.loads(pickle.dumps(units)) == units
    assert UnitList.of(list(units)) == units

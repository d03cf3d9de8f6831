from pathlib import Path

import pytest

from tasks.core.config import Form, FormField, load_config
from tasks.core.labels import LabelMatcher, normalize_label

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def form() -> Form:
    return load_config(CONFIG, "energy-week-2023").campaign.form


@pytest.mark.parametrize("text, expected", [
    ("张贴宣传画", "张贴宣传画"),
    (" 张贴 宣传画 ", "张贴宣传画"),
    ("张贴宣传画（套）", "张贴宣传画"),
    ("张贴宣传画(套)", "张贴宣传画"),
    ("张贴宣传画【套】", "张贴宣传画"),
    ("张贴宣传画[套]", "张贴宣传画"),
    ("张贴宣传画（单位：套）", "张贴宣传画"),
    ("张贴宣传画：", "张贴宣传画"),
    ("张贴宣传画:", "张贴宣传画"),
    ("*张贴宣传画", "张贴宣传画"),
    ("张贴宣传画*", "张贴宣传画"),
    ("*张贴宣传画（套）：", "张贴宣传画"),
    ("1.张贴宣传画", "张贴宣传画"),
    ("１．张贴宣传画", "张贴宣传画"),
    ("一、张贴宣传画", "张贴宣传画"),
    ("（三）张贴宣传画", "张贴宣传画"),
    ("Posters", "posters"),
    ("ＰＯＳＴＥＲＳ", "posters"),
    ("2023年张贴宣传画", "2023年张贴宣传画"),
    ("（套）", "(套)"),
    (None, ""),
    (120.0, "120.0"),
])
def test_normalize_label(text, expected):
    assert normalize_label(text) == expected


@pytest.mark.parametrize("text, key", [
    ("张贴宣传画", "posters"),
    ("宣传画", "posters"),          # synonym
    ("海报（张）", "posters"),
    ("posters", "posters"),         # key
    ("POSTERS", "posters"),
    ("张贴宣传画套", "posters"),     # label + unit
    ("宣传画（套）", "posters"),
    ("宣传画套", "posters"),
    ("宣传画数量", "posters"),
    ("横幅(条)", "banners"),
    ("展板【块】", "boards"),
    ("培训场次", "trainings"),
    ("举办培训场", "trainings"),
    ("参与干部职工（人次）", "participants"),
    ("参与干部职工人次", "participants"),
    ("省级以上媒体新闻稿件", "news_provincial"),
    ("主要活动情况", "activities"),
    ("特色亮点：", "highlights"),
    ("填报单位", "_unit_name"),     # extras
    ("填报单位（盖章）", "_unit_name"),
    ("单位代码", "_unit_code"),
    ("情况说明", "_explanation"),
])
def test_match(form, text, key):
    extra = {"填报单位": "_unit_name", "单位名称": "_unit_name", "单位代码": "_unit_code",
             form.explanation_label: "_explanation"}
    assert LabelMatcher(form, extra).match(text) == key


@pytest.mark.parametrize("text", [
    "张贴宣传画情况统计", "宣传", "其他", "数值", "", None, 120, 1.5, True, "宣传画个",
    "套", "横幅套", "填报单位数量",
])
def test_no_match(form, text):
    extra = {"填报单位": "_unit_name"}
    assert LabelMatcher(form, extra).match(text) is None


def test_label_wins_over_another_fields_synonym():
    form = Form(fields=[FormField(key="a", label="宣传画", synonyms=["海报"]),
                        FormField(key="b", label="海报", synonyms=["宣传画"])])
    m = LabelMatcher(form)
    assert (m.match("宣传画"), m.match("海报")) == ("a", "b")


def test_extra_does_not_override_a_field():
    form = Form(fields=[FormField(key="a", label="情况说明", kind="text")])
    assert LabelMatcher(form, {"情况说明": "_explanation"}).match("情况说明") == "a"

"""One Jinja environment for every template: autoescape on, filters registered here.

A campaign may override any template by putting a file of the same name in
``<config>/campaigns/<campaign-id>/templates/``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .formatting import chinese_date, chinese_datetime, escape_markdown, round_down_prose

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@lru_cache(maxsize=16)
def environment(override_dir: str | None = None) -> Environment:
    dirs = ([override_dir] if override_dir and Path(override_dir).is_dir() else []) + [str(TEMPLATES)]
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(d) for d in dirs]),
        autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml", "j2"),
                                     default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(yu=round_down_prose, cdate=chinese_date, cdatetime=chinese_datetime,
                       md=escape_markdown)
    return env


def _plain(name: str) -> bool:
    return name.endswith((".txt.j2", ".md.j2"))


def render(name: str, override_dir: str | None = None, **context) -> str:
    """Render a template; ``.txt.j2``/``.md.j2`` are plain text (no HTML escaping)."""
    env = environment(override_dir)
    template = env.get_template(name)
    if _plain(name):
        # plain text outputs must not carry HTML entities: render with autoescape off
        with_plain = env.overlay(autoescape=False)
        template = with_plain.get_template(name)
    return template.render(**context)


def template_files(override_dir: str | None = None) -> list[Path]:
    """Every template file in effect (used to fingerprint a bulletin's inputs)."""
    files = {p.name: p for p in sorted(TEMPLATES.glob("*.j2"))}
    if override_dir and Path(override_dir).is_dir():
        files.update({p.name: p for p in sorted(Path(override_dir).glob("*.j2"))})
    return [files[k] for k in sorted(files)]

"""One Jinja environment for every template: autoescape on, filters registered here.

A campaign may override any template by putting a file of the same name in
``<config>/campaigns/<campaign-id>/templates/``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined

from .formatting import (
    chinese_date,
    chinese_datetime,
    cn_ordinal,
    escape_markdown,
    round_down_prose,
)
from .shipped import TEMPLATES  # the repository's templates/, or the installed package


def _escapes(name: str | None) -> bool:
    """HTML-escape everything but the plain-text and Markdown templates (which must not carry
    HTML entities; Markdown escapes its own syntax with the ``md`` filter)."""
    return not (name or "").endswith((".txt.j2", ".md.j2"))


@lru_cache(maxsize=16)
def environment(override_dir: str | None = None) -> Environment:
    dirs = ([override_dir] if override_dir and Path(override_dir).is_dir() else []) + [str(TEMPLATES)]
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(d) for d in dirs]),
        autoescape=_escapes,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,  # templates are read once per process (a flow run is one process)
    )
    env.filters.update(yu=round_down_prose, cdate=chinese_date, cdatetime=chinese_datetime,
                       md=escape_markdown, cn=cn_ordinal)
    return env


def render(name: str, override_dir: str | None = None, **context) -> str:
    """Render a template (compiled once per process and cached by Jinja)."""
    return environment(override_dir).get_template(name).render(**context)


def template_files(override_dir: str | None = None) -> list[Path]:
    """Every template file in effect (used to fingerprint a bulletin's inputs)."""
    files = {p.name: p for p in sorted(TEMPLATES.glob("*.j2"))}
    if override_dir and Path(override_dir).is_dir():
        files.update({p.name: p for p in sorted(Path(override_dir).glob("*.j2"))})
    return [files[k] for k in sorted(files)]

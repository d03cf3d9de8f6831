"""Where a command's state lives (standard library only: the launcher needs it before anything
heavy is imported)."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``--home``, else ``BULLETIN_HOME``, else ``./var``; absolute."""
    return Path(home or os.environ.get("BULLETIN_HOME") or "var").expanduser().resolve()

"""Where the files that travel with the code are: the templates (``templates/``) and the demo's
configuration (``config/``). From a checkout they are the repository's folders; installed
from the wheel they are the packages ``bulletin_templates`` and ``bulletin_config``
(pyproject.toml maps the folders to those names)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]


def shipped_folder(folder: str, package: str) -> Path:
    """The installed package's folder when there is one, else the checkout's folder."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        found = Path(next(iter(spec.submodule_search_locations)))
        if found.is_dir():
            return found
    return _CHECKOUT / folder


TEMPLATES = shipped_folder("templates", "bulletin_templates")
DEMO_CONFIG = shipped_folder("config", "bulletin_config")
STARTER = TEMPLATES / "starter"  # what ``bulletin init`` writes into a new project folder

"""The allowed direction of imports (pyproject.toml, ``[tool.importlinter]``): flows → the
stages of a return → core, and building a request or a reminder without imap_tools or
pandera. Checked with import-linter on the code as it is, and on a copy with forbidden imports
injected, which must fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(where: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(where / "pyproject.toml"), "--no-cache"], cwd=where,
                          capture_output=True, text=True, timeout=300)


def test_the_code_keeps_its_import_contracts():
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 kept, 0 broken" in run.stdout


def test_an_injected_forbidden_import_breaks_the_check(tmp_path):
    for part in ("tasks", "flows", "pyproject.toml"):
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, tmp_path / part)
    with open(tmp_path / "tasks" / "mail" / "notices.py", "a", encoding="utf-8") as f:
        f.write("\nfrom ..intake import mailbox  # noqa: E402 - injected: a request would need imap_tools\n")
    with open(tmp_path / "tasks" / "core" / "ledger.py", "a", encoding="utf-8") as f:
        f.write("\nimport flows.context  # noqa: E402 - injected: core reaching up to the flows\n")
    run = _lint(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "0 kept, 2 broken" in run.stdout
    assert "tasks.mail.notices -> tasks.intake.mailbox" in run.stdout
    assert "tasks.core.ledger -> flows.context" in run.stdout

"""Installed like any Python tool: the project's wheel built and installed into a fresh
virtualenv without the network (from the wheels make keeps in .wheelhouse/), then `init`,
`check` and `demo` run from an empty folder with ``python -I``, the code coming from the new
virtualenv, the templates and the demo's configuration from the package."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".wheelhouse"
pytestmark = pytest.mark.slow


def _run(args: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULLETIN_", "PREFECT_", "PYTHON"))}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_installs_offline_and_runs_from_an_empty_folder(tmp_path):
    if not list(WHEELHOUSE.glob("setuptools-*.whl")):
        message = "no .wheelhouse: `make test` makes it (make .wheelhouse/.built)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    offline = ["--no-index", "--find-links", WHEELHOUSE]
    built = _run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", *offline, "-w", tmp_path / "dist", ROOT],
                 tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("bulletin-*.whl")
    installed = _run([python, "-m", "pip", "install", "--quiet", *offline, wheel], tmp_path)
    assert installed.returncode == 0, installed.stdout + installed.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    where = _run([python, "-I", "-c", "import flows, tasks, bulletin_templates, bulletin_config; "
                  "from tasks.core.shipped import TEMPLATES, DEMO_CONFIG; "
                  "print(flows.__file__, tasks.__file__, TEMPLATES, DEMO_CONFIG, sep='\\n')"], empty)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(env_dir)) for line in where.stdout.split()), where.stdout

    bulletin = [python, "-I", "-m", "flows.cli"]
    refused = _run([*bulletin, "status", "report-2027"], empty)
    assert refused.returncode == 2 and "bulletin init" in refused.stderr
    made = _run([*bulletin, "init", "proj"], empty)
    assert made.returncode == 0, made.stdout + made.stderr
    checked = _run([*bulletin, "check"], empty / "proj")
    assert checked.returncode == 0 and "配置检查通过" in checked.stdout, checked.stdout + checked.stderr
    demo = _run([*bulletin, "demo", "--home", "demo-home"], empty)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "[失败]" not in demo.stdout and "简讯已发送" in demo.stdout
    assert (empty / "demo-home" / "bulletins" / "energy-week-2023" / "v1" / "bulletin.docx").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["demo-home", "proj"]  # nothing else written

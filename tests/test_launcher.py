"""The ``bulletin`` entry point's choices before it hands a step to serve's warm process."""

from __future__ import annotations

from flows.launcher import hand_over, home_of


def test_the_home_is_found_as_the_command_line_finds_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BULLETIN_HOME", raising=False)
    assert home_of(["collect", "c"]) == tmp_path / "var"
    monkeypatch.setenv("BULLETIN_HOME", "from-env")
    assert home_of(["collect", "c"]) == tmp_path / "from-env"
    assert home_of(["collect", "c", "--home", "h1"]) == tmp_path / "h1"
    assert home_of(["collect", "--home=h2", "c"]) == tmp_path / "h2"


def test_without_a_warm_process_the_step_runs_here(tmp_path, monkeypatch):
    monkeypatch.delenv("BULLETIN_WARM", raising=False)
    home = tmp_path / "home"
    assert hand_over(["collect", "c", "--home", str(home)]) is None  # no socket
    (home / "prefect").mkdir(parents=True)
    (home / "prefect" / "cli.sock").write_text("")  # left behind, nobody listening
    assert hand_over(["collect", "c", "--home", str(home)]) is None
    assert hand_over(["serve", "--home", str(home)]) is None  # never handed over
    assert hand_over(["collect", "--help", "--home", str(home)]) is None
    assert hand_over([]) is None

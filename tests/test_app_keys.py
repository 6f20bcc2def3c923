"""Unknown top-level keys are refused (issue 20: Hydra's hint for a misspelt key,
``+experimnt=fig3``, led to a run that silently ignored it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agc_pipeline.build import require_app
from agc_pipeline.conf_path import CONFIG_DIR, preset_app
from agc_pipeline.errors import ConfigError
from tests.conftest import ROOT, compose_config

APPS = ("train", "analyze", "plan")


@pytest.mark.parametrize("app, override, says", [
    ("analyze", "+experimnt=fig3", "experimnt (did you mean experiment?)"),
    ("train", "+sed=3", "sed (did you mean seed?)"),
    ("plan", "+foo=1", "unknown top-level key foo"),
])
def test_an_unknown_top_level_key_is_refused(app: str, override: str, says: str) -> None:
    cfg = compose_config(app, [override])
    with pytest.raises(ConfigError, match="unknown top-level key") as info:
        require_app(cfg, app)
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("app", APPS)
def test_every_preset_of_an_app_holds_only_known_keys(app: str) -> None:
    presets = [p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")
               if preset_app(p.stem) == app]
    for preset in [None, *presets]:
        require_app(compose_config(app, [] if preset is None else [f"experiment={preset}"]), app)
    for debug in (("debug=fast",) if app != "plan" else ()):
        require_app(compose_config(app, [debug]), app)


def test_the_misspelt_preset_of_the_cli_exits_2_and_runs_nothing(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "agc_pipeline.analyze", "+experimnt=fig3",
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "did you mean experiment?" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "results.json").exists()

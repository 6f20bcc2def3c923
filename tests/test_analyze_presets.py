"""The analyze app's presets survive a group swap, and each app's ``--help`` lists only its
own groups and presets (issue 10, points 10 and 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from agc_pipeline.analyze import build_study
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError
from agc_pipeline.reporting.sweeps import app_option, skip_finished_job
from tests.conftest import ROOT, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def declared_app(preset: str) -> str | None:
    return OmegaConf.load(CONFIG_DIR / "experiment" / f"{preset}.yaml").get("app")


def overridden_groups(preset: str) -> set[str]:
    """The groups a preset picks an option of (``override /<group>: ...``)."""
    defaults = OmegaConf.load(CONFIG_DIR / "experiment" / f"{preset}.yaml").get("defaults", [])
    return {key.split()[-1].lstrip("/") for entry in defaults if not isinstance(entry, str)
            for key in entry}


# ------------------------------------------------------------------------------------------
# point 10: every analyze preset with every option of the groups the analyze app builds

ANALYZE_PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")
                         if declared_app(p.stem) == "analyze")
#: the groups whose objects the analyze app builds (logger: a sink, made when the run starts),
#: and debug (values of the study)
GROUPS = ("assignment", "scheme", "decoder", "debug")
#: what each debug option makes of the study: encoder draws (analysis.realizations)
DEBUG_DRAWS = {"fast": 2, "profile": 5}
#: the genuinely impossible combinations (and what they say): an exact scheme of Tandon et
#: al. needs m = 1 (the presets use m = 2), ce_frc a fractional repetition assignment, and
#: construction (19) (Fig. 5) n = m·k workers, which k = n assignments do not have
NEEDS_M1 = "needs m = 1"
NEEDS_FRACTIONAL = "ce_frc needs assignment=fractional"
NEEDS_MK = "needs n = m·k workers"
EXACT = {("scheme", "crc"): NEEDS_M1, ("scheme", "frc"): NEEDS_M1,
         ("scheme", "ce_frc"): NEEDS_FRACTIONAL}
IMPOSSIBLE = {
    "fig3": {**EXACT, ("scheme", "hadamard_nullspace"): NEEDS_MK},  # n = k = 91
    "fig4": EXACT,  # the coset graph has n = m·k: (19) runs on it
    "fig5": {**EXACT, **{("assignment", name): NEEDS_MK
                         for name in ("bibd", "cyclic", "fractional", "identity", "srg")}},
}


def test_analyze_presets_are_listed_and_set_only_the_tested_groups() -> None:
    assert set(ANALYZE_PRESETS) == set(IMPOSSIBLE)
    for preset in ANALYZE_PRESETS:
        assert overridden_groups(preset) <= set(GROUPS) - {"debug"}, preset
    assert set(DEBUG_DRAWS) == set(options("debug"))


@pytest.mark.parametrize("preset", ANALYZE_PRESETS)
def test_every_option_of_every_group_after_an_analyze_preset(preset: str) -> None:
    """Builds what the app builds before its Monte Carlo (assignment, scheme, decoder, the
    stack baseline and the compared schemes); the swapped option is the one built."""
    unexpected = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for group in GROUPS:
            for option in options(group):
                expected = IMPOSSIBLE[preset].get((group, option))
                try:
                    study = build_study(compose("analyze", [f"experiment={preset}",
                                                            f"{group}={option}"]))
                except ConfigError as exc:
                    message = str(exc)
                    if expected is None or expected not in message or "\n" in message:
                        unexpected.append(f"{group}={option}: {message}")
                    continue
                except Exception as exc:  # noqa: BLE001 - collected, reported below
                    unexpected.append(f"{group}={option}: {type(exc).__name__}: {exc}")
                    continue
                if expected is not None:
                    unexpected.append(f"{group}={option} builds (expected {expected!r})")
                    continue
                built = {"assignment": study.scheme.assignment.kind,
                         "scheme": study.scheme.name, "decoder": study.decoder.name,
                         "debug": option if study.realizations == DEBUG_DRAWS.get(option)
                         else f"{study.realizations} draws"}[group]
                if built != option:
                    unexpected.append(f"{group}={option} built {built}")
    assert not unexpected, "\n".join(unexpected)


def test_an_analyze_swap_drops_only_the_values_of_the_swapped_option() -> None:
    cfg = compose_config("analyze", ["experiment=fig4", "scheme=stack"])
    assert "epsilon" not in cfg.scheme and cfg.assignment.k == 27
    assert list(cfg.assignment.generating_set) == [0, 1, 2, 3, 4]
    cfg = compose_config("analyze", ["experiment=fig3", "assignment=srg"])
    assert "design" not in cfg.assignment and cfg.scheme.epsilon == 0.0
    assert cfg.analysis.realizations == 100  # the preset's analysis keys stay
    cfg = compose_config("analyze", ["experiment=fig5", "scheme=random_diagonal"])
    assert "variant" not in cfg.scheme and cfg.assignment.gamma == 6
    cfg = compose_config("analyze", ["experiment=fig4", "scheme.epsilon=0.2"])
    assert cfg.scheme.epsilon == 0.2  # a command-line value still wins


# ------------------------------------------------------------------------------------------
# point 11: each app's --help lists its own groups and presets, not the other app's


def help_groups(app: str) -> dict[str, set[str]]:
    """``group -> options`` of the "Configuration groups" section of ``app --help``."""
    proc = subprocess.run([sys.executable, "-m", f"agc_pipeline.{app}", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False,
                          env=os.environ)
    assert proc.returncode == 0, proc.stderr[-2000:]
    section = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = {}
    for line in section.strip().splitlines()[1:]:  # after "Compose your configuration ..."
        if line.strip():
            group, _, names = line.partition(": ")
            listed[group] = {name.strip() for name in names.split(" (")[0].split(",")}
    return listed


def used_groups(app: str) -> set[str]:
    """The app's own groups, as Hydra's choices of its primary config say (no preset/...)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(app, return_hydra_config=True)
    return {group for group in cfg.hydra.runtime.choices if "/" not in group}


APPS = ("analyze", "train", "plan")


def test_each_apps_help_lists_its_groups_and_presets_only() -> None:
    presets = {p.stem: declared_app(p.stem) for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert set(presets.values()) <= set(APPS)  # every preset declares one of the apps
    groups = {app: used_groups(app) for app in APPS}
    assert groups["analyze"] == {"assignment", "scheme", "decoder", "logger", "experiment",
                                 "debug"}
    assert {"dataset", "model", "trainer", "code", "cluster", "debug"} <= groups["train"]
    assert groups["plan"] == {"cluster", "experiment"}
    for app in APPS:
        listed = help_groups(app)
        expected = {group: set(options(group)) for group in groups[app]}
        expected["experiment"] = {name for name, owner in presets.items() if owner == app}
        expected["hydra/launcher"] = set(options("hydra/launcher"))
        assert listed == expected, app
        assert not any(group.startswith("preset") for group in listed), app
        for other in set(APPS) - {app}:
            assert not {name for name, owner in presets.items() if owner == other} & set(
                ).union(*listed.values()), (app, other)
            assert not (groups[other] - groups[app]) & set(listed), (app, other)


# ------------------------------------------------------------------------------------------
# analysis.skip_finished is a declared option, checked in one line


def test_analysis_skip_finished_is_a_declared_and_checked_option(tmp_path: Path) -> None:
    cfg = compose_config("analyze", ["analysis.skip_finished=false"])
    assert app_option(cfg, "skip_finished", True) == ("analysis.skip_finished", False)
    assert not skip_finished_job(cfg, ROOT, ("results.json",))
    with pytest.raises(ConfigError, match="analysis.skip_finished"):
        build_study(compose_config("analyze", ["analysis.skip_finished=maybe"]))
    proc = subprocess.run([sys.executable, "-m", "agc_pipeline.analyze",
                           "analysis.skip_finished=maybe", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("agc-analyze: configuration error:") and "skip_finished" in line

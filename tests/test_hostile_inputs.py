"""Damaged input files and values blamed on the wrong key (issue 20): each is refused in one
line naming the file (or the key) and what is wrong with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agc_pipeline.cluster.planner import load_convergence
from agc_pipeline.errors import ConfigError

#: a convergence file (bench/measure_convergence.py's shape) of three short curves
CURVES = {"exact": "exact", "curves": {
    "exact": {"normalised_error": 0.0, "loss": [5.0, 4.0, 3.0, 2.0, 1.0]},
    "a": {"normalised_error": 0.2, "loss": [5.0, 4.5, 4.0, 3.0, 2.0]},
    "b": {"normalised_error": 0.5, "loss": [5.0, 5.0, 4.5, 4.0, 3.5]}}}


def write_curves(path: Path, **changes: object) -> Path:
    data = json.loads(json.dumps(CURVES))
    for label, curve in changes.items():
        data["curves"][label] = curve
    path.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return path


def test_a_sound_convergence_file_is_read(tmp_path: Path) -> None:
    assert load_convergence(write_curves(tmp_path / "c.json"), 0.6, None).target_loss == 3.0


@pytest.mark.parametrize("damage, says", [
    (b"\xff\xfe\x00{bad", "not a convergence-curves file (not UTF-8 text)"),
    (b"", "not a convergence-curves file (JSONDecodeError"),
    (b"[1, 2]", "not a convergence-curves file (TypeError"),
    (b'{"exact": "x", "curves": {}}', "not a convergence-curves file (KeyError: 'x')"),
    (b'{"exact": "e", "curves": {"e": {"loss": [1, 2]}}}',
     "not a convergence-curves file (KeyError: 'normalised_error')"),
    (b'{"exact": "e", "curves": {"e": {"normalised_error": 0, "loss": "abc"}}}',
     "not a convergence-curves file (ValueError"),
])
def test_a_damaged_convergence_file_is_named(tmp_path: Path, damage: bytes, says: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(damage)
    with pytest.raises(ConfigError, match="^plan.convergence ") as info:
        load_convergence(path, 0.5, None)
    assert str(path) in str(info.value) and says in str(info.value)


@pytest.mark.parametrize("curve, says", [
    ({"normalised_error": 0.2, "loss": [5.0, float("nan"), 4.0]}, "holds a NaN or infinite"),
    ({"normalised_error": 0.2, "loss": [5.0, float("inf"), 4.0]}, "holds a NaN or infinite"),
    ({"normalised_error": float("nan"), "loss": [5.0, 4.0]}, "holds a NaN or infinite"),
    ({"normalised_error": 1.0, "loss": [5.0, 4.0]}, "normalised_error 1.0, outside [0, 1)"),
])
def test_a_convergence_curve_with_nan_is_named(tmp_path: Path, curve: dict, says: str) -> None:
    path = write_curves(tmp_path / "c.json", a=curve)
    with pytest.raises(ConfigError, match=rf"^plan.convergence {path}: curve 'a' "):
        load_convergence(path, 0.5, None)
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace(")", r"\)")):
        load_convergence(path, 0.5, None)


def test_a_convergence_path_that_is_a_directory_is_not_called_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_convergence(tmp_path, 0.5, None)

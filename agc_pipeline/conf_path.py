"""Where the Hydra configs live (``conf/``, package data, so a wheel install finds
them), the app each experiment preset is for, and the group listing of each app's ``--help``.

The apps share one config tree. Each ``--help`` lists only its own app's groups (those of its
primary config's defaults list, without the internal ``preset/...`` groups) and the
experiment presets that declare it (``app:``), generated from ``conf/`` when the help is
printed: ``${agc_help_groups:<app>}`` in ``hydra.help.template`` of ``conf/<app>.yaml``.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

_HERE = Path(__file__).resolve().parent
#: ``agc_pipeline/conf`` in a wheel install, else the checkout's top-level ``conf/``
CONFIG_DIR = _HERE / "conf" if (_HERE / "conf").is_dir() else _HERE.parent / "conf"


def preset_app(name: str) -> str | None:
    """The ``app`` that ``conf/experiment/<name>.yaml`` declares (None: no such preset, or it
    declares none)."""
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.is_file():
        return None
    app = OmegaConf.load(path).get("app")
    return None if app is None else str(app)


def options(group: str) -> list[str]:
    """The option names of ``conf/<group>/``, sorted."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def app_groups(app: str) -> dict[str, tuple[str | None, list[str]]]:
    """``group -> (default option, options)`` of the ``app`` whose primary config is
    ``conf/<app>.yaml``: the groups of its defaults list (``preset/...`` and ``hydra/...``
    left out) and, for ``experiment``, only the presets that declare ``app: <app>``."""
    groups: dict[str, tuple[str | None, list[str]]] = {}
    for entry in OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{app}.yaml"))["defaults"]:
        if not isinstance(entry, dict):
            continue  # _self_
        ((key, default),) = entry.items()
        group = key.split()[-1].split("@")[0]  # "optional preset/x/y@y" -> "preset/x/y"
        if "/" in group:
            continue
        names = options(group)
        if group == "experiment":
            names = [name for name in names if preset_app(name) == app]
        groups[group] = (None if default is None else str(default), names)
    return dict(sorted(groups.items()))


def _global_keys(group: str, app: str) -> set[str] | None:
    """The top-level keys the options of ``conf/<group>/`` add, when they are
    ``# @package _global_`` overlays (experiment: only ``app``'s presets; code, debug); None
    for an ordinary group."""
    files = [f for f in (CONFIG_DIR / group).glob("*.yaml")
             if group != "experiment" or preset_app(f.stem) == app]
    if not any(f.read_text(encoding="utf-8").startswith("# @package _global_") for f in files):
        return None
    return {str(key) for f in files for key in OmegaConf.load(f) if key != "defaults"}


@cache
def known_keys(app: str) -> frozenset[str]:
    """The top-level keys a config of ``app`` may hold: its primary config's own keys, its
    groups (or, for ``_global_`` groups such as ``experiment``, the keys their options add),
    the packages of its preset entries, and ``hydra``."""
    primary = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{app}.yaml"))
    keys = {str(k) for k in primary if k != "defaults"} | {"hydra"}
    for entry in primary["defaults"]:
        if not isinstance(entry, dict):
            continue  # _self_
        ((key, _),) = entry.items()
        group, _, package = key.split()[-1].partition("@")
        if package:
            keys.add(package)
        elif (added := _global_keys(group, app)) is not None:
            keys |= added
        else:
            keys.add(group)
    return frozenset(keys)


def unknown_key_error(keys: list[str], app: str) -> str | None:
    """One line naming the top-level ``keys`` that ``app`` does not know (e.g. a misspelt
    ``+experimnt=fig3``, which Hydra's own hint suggests and the app would otherwise ignore),
    with the closest known key; None when every key is known."""
    known = known_keys(app)
    unknown = [key for key in keys if key not in known]
    if not unknown:
        return None
    groups = [p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "preset"]
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(known - {"hydra"}) + groups, n=1)
        hints.append(f"{key}" + (f" (did you mean {close[0]}?)" if close else ""))
    return (f"unknown top-level key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: the "
            f"{app} app has {', '.join(sorted(known - {'hydra'}))}")


def help_groups(app: str) -> str:
    """The ``--help`` lines of ``app``'s groups: ``group: a, b, c (default: a)``, then the
    launchers of ``conf/hydra/launcher/`` (for ``-m`` sweeps)."""
    lines = []
    for group, (default, names) in app_groups(app).items():
        suffix = f" (default: {default})" if default is not None else ""
        lines.append(f"{group}: {', '.join(names)}{suffix}")
    launchers = options("hydra/launcher")
    if launchers:
        lines.append(f"hydra/launcher: {', '.join(launchers)} (multirun -m; default: basic)")
    return "\n".join(lines)


OmegaConf.register_new_resolver("agc_help_groups", help_groups, replace=True)

"""Where the Hydra configs live (``conf/``, package data, so a wheel install finds
them), the app each experiment preset is for, and the group listing of each app's ``--help``.

The apps share one config tree. Each ``--help`` lists only its own app's groups (those of its
primary config's defaults list, without the internal ``preset/...`` groups) and the
experiment presets that declare it (``app:``), generated from ``conf/`` when the help is
printed: ``${agc_help_groups:<app>}`` in ``hydra.help.template`` of ``conf/<app>.yaml``.
"""

from __future__ import annotations

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

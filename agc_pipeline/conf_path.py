"""Where the Hydra configs live: ``conf/`` of a source checkout, else the installed copy."""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
CONFIG_DIR = _HERE.parent / "conf" if (_HERE.parent / "conf").is_dir() else _HERE / "conf"

"""Turn composed configs into objects, with one clear error for impossible parameters.

The only module besides the apps that knows about Hydra: it calls ``hydra.utils.instantiate``
on the option files of ``conf/`` and unwraps Hydra's wrapper exception so that a
:class:`~agc_pipeline.errors.ConfigError` reaches the user as the one line it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.decoding import Decoder
from agc_pipeline.errors import ConfigError


def _instantiate(node: DictConfig, what: str, **kwargs: Any) -> Any:
    """``instantiate(node)`` (as a partial when kwargs are given), re-raising ConfigError."""
    if node is None or "_target_" not in node:
        raise ConfigError(f"{what} has no _target_: choose an option, e.g. {what}=<name>")
    try:
        if kwargs:
            # objects (an Assignment) cannot pass through OmegaConf: bind them afterwards
            return instantiate(node, _partial_=True)(**kwargs)
        return instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{what}: {cause or exc}") from None
    except TypeError as exc:  # a key the target does not accept
        raise ConfigError(f"{what}: {exc}") from None


def build_assignment(cfg: DictConfig) -> Assignment:
    """The assignment matrix chosen by ``assignment=...``."""
    assignment = _instantiate(cfg.assignment, "assignment")
    if not isinstance(assignment, Assignment):
        raise ConfigError("assignment: _target_ must return an Assignment")
    return assignment


def build_scheme(node: DictConfig, assignment: Assignment, m: int, what: str = "scheme") -> Scheme:
    """The scheme of ``node`` (e.g. ``cfg.scheme``) on ``assignment`` with reduction ``m``."""
    scheme = _instantiate(node, what, assignment=assignment, m=int(m))
    if not isinstance(scheme, Scheme):
        raise ConfigError(f"{what}: _target_ must return a Scheme")
    return scheme


def build_decoder(cfg: DictConfig) -> Decoder:
    """The decoder chosen by ``decoder=...``."""
    decoder = _instantiate(cfg.decoder, "decoder")
    if not isinstance(decoder, Decoder):
        raise ConfigError("decoder: _target_ must return a Decoder")
    return decoder


def run_app(main: Callable[[], Any], app: str) -> Any:
    """Run ``main``; report a ConfigError as one line on stderr and exit with status 2."""
    import sys

    try:
        return main()
    except ConfigError as exc:
        print(f"{app}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

"""Turn composed configs into objects, with one clear error for impossible parameters.

The only module besides the apps that knows about Hydra: it calls ``hydra.utils.instantiate``
on the option files of ``conf/`` and unwraps Hydra's wrapper exception so that a
:class:`~agc_pipeline.errors.ConfigError` reaches the user as the one line it is.

The train app's composition root is :func:`build_run` (config → :class:`RunSpec`), used by
the app, the PS's workers and the DDP ranks alike; :func:`validate` runs every config-only
rule (:mod:`agc_pipeline.rules`) and the settings' validation without building data or
models, in milliseconds.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from agc_pipeline.codes.assignment import Assignment
from agc_pipeline.codes.base import Scheme
from agc_pipeline.coding.decoding import Decoder
from agc_pipeline.conf_path import preset_app
from agc_pipeline.errors import ConfigError, WriteFailed, one_line, require, write_failed
from agc_pipeline.rules import (
    check_data,
    check_m,
    check_model_memory,
    check_model_task,
    check_plan,
    check_top_level,
)

if TYPE_CHECKING:
    from agc_pipeline.cluster.costmodel import ClusterModel
    from agc_pipeline.coding.stragglers import StragglerModel
    from agc_pipeline.data import Dataset
    from agc_pipeline.models import CodedModel

#: the errors of a storage that cannot take a write: reported in one line by :func:`run_app`
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


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
        raise ConfigError(f"{what}: {one_line(cause or exc)}") from None
    except TypeError as exc:  # a key the target does not accept
        raise ConfigError(f"{what}: {exc}") from None


def _build(node: DictConfig, what: str, kind: type, **kwargs: Any) -> Any:
    """``_instantiate`` plus a check that the target returned a ``kind``."""
    obj = _instantiate(node, what, **kwargs)
    if not isinstance(obj, kind):
        raise ConfigError(f"{what}: _target_ must return a {kind.__name__}")
    return obj


def build_assignment(cfg: DictConfig) -> Assignment:
    """The assignment matrix chosen by ``assignment=...``."""
    return _build(cfg.assignment, "assignment", Assignment)


def build_scheme(node: DictConfig, assignment: Assignment, m: int, what: str = "scheme") -> Scheme:
    """The scheme of ``node`` (e.g. ``cfg.scheme``) on ``assignment`` with reduction ``m``."""
    return _build(node, what, Scheme, assignment=assignment, m=m)  # the scheme checks m


def build_decoder(cfg: DictConfig) -> Decoder:
    """The decoder chosen by ``decoder=...``."""
    return _build(cfg.decoder, "decoder", Decoder)


def build_dataset(cfg: DictConfig) -> Dataset:
    """The data set chosen by ``dataset=...`` (train and test tensors)."""
    from agc_pipeline.data import Dataset

    return _build(cfg.dataset, "dataset", Dataset)


#: model keys that :func:`build_model` fills from the data set where they are null
MODEL_DATA_KEYS = ("input_dim", "num_classes", "in_channels", "image_size", "vocab_size",
                   "context")


def _check_model_class(cls: type, target: str, dataset: Dataset) -> None:
    """Task and input kind of the model class against the data set (before building)."""
    name = target.rsplit(".", 1)[-1]
    from torch import nn

    if isinstance(cls, type) and issubclass(cls, nn.Module) and not all(
            callable(getattr(cls, attr, None)) for attr in ("loss_sum", "metric")):
        raise ConfigError(f"model {name} has no loss_sum / metric (a plain torch.nn.Module): "
                          f"wrap it in WithLoss with model=custom model.module._target_="
                          f"{target} (its arguments as +model.module.<name>=<value>)")
    check_model_task(name, getattr(cls, "task", None), dataset,
                     " (use model=linear with dataset=synthetic_linear, a classifier otherwise)")
    inputs = getattr(cls, "inputs", None)
    if inputs is not None and dataset.kind not in inputs:
        raise ConfigError(f"model {name} takes {' or '.join(inputs)} inputs but dataset "
                          f"{dataset.name} holds {dataset.kind} of shape {dataset.sample_shape}")


def _check_model_object(obj: Any, target: str, dataset: Dataset) -> None:
    """The trainer's contract (see :mod:`agc_pipeline.models`) on the built model."""
    from torch import nn

    name = target.rsplit(".", 1)[-1]
    if not isinstance(obj, nn.Module):
        raise ConfigError(f"model: _target_ {target} must return a torch.nn.Module")
    missing = [attr for attr in ("loss_sum", "metric") if not callable(getattr(obj, attr, None))]
    if missing:
        raise ConfigError(f"model {name} has no {' / '.join(missing)}(outputs, targets): wrap "
                          "it in agc_pipeline.models.WithLoss (see conf/model/custom_example.yaml)")
    task = getattr(obj, "task", None)
    if task not in ("classification", "regression"):
        raise ConfigError(f"model {name} must have task = classification | regression "
                          f"(got {task!r})")
    check_model_task(name, task, dataset)


def build_model(cfg: DictConfig, dataset: Dataset) -> CodedModel:
    """The model chosen by ``model=...``; each key of :data:`MODEL_DATA_KEYS` that the model
    config has is filled in from ``dataset`` where it is null and checked against it where it
    is set. Built under ``torch.random.fork_rng``: no model leaves a trace on the global RNG."""
    import torch

    node = cfg.model
    if node is None or "_target_" not in node:
        raise ConfigError("model has no _target_: choose an option, e.g. model=<name>")
    module = node.get("module")
    if module is not None and "_target_" in module and module._target_ is None:
        raise ConfigError("model.module._target_ is not set: name your nn.Module class, e.g. "
                          "model=custom model.module._target_=mynet.TinyCNN (a module in the "
                          "folder you run in, or in an installed package)")
    target = str(node._target_)
    try:
        cls = get_class(target)
    except Exception as exc:  # noqa: BLE001 - an unknown target is a config error
        raise ConfigError(f"model: cannot import {target} ({exc})") from None
    _check_model_class(cls, target, dataset)
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    shape = f"{dataset.kind} of shape {dataset.sample_shape}"
    for key in MODEL_DATA_KEYS:
        if key not in node:
            continue
        value = getattr(dataset, key)
        if node[key] is None:
            if value is None:
                raise ConfigError(f"model.{key} is null and dataset {dataset.name} ({shape}) "
                                  f"has no {key} to fill it from; set it or choose another "
                                  "dataset")
            node[key] = value
        elif value is None:
            raise ConfigError(f"model.{key}={node[key]} but dataset {dataset.name} ({shape}) "
                              f"has no {key}; choose a matching dataset")
        elif node[key] != value:
            raise ConfigError(f"model.{key}={node[key]} does not match dataset "
                              f"{dataset.name} ({key} = {value}); leave it null")
    with torch.random.fork_rng(devices=[]):
        model = _instantiate(node, "model")
    _check_model_object(model, target, dataset)
    return model


def build_straggler(cfg: DictConfig) -> StragglerModel:
    """The straggler model chosen by ``straggler=...``."""
    from agc_pipeline.coding.stragglers import StragglerModel

    return _build(cfg.straggler, "straggler", StragglerModel)


def build_cluster(cfg: DictConfig) -> ClusterModel | None:
    """The cluster model chosen by ``cluster=...`` (None for ``cluster=none`` or no group)."""
    from agc_pipeline.cluster.costmodel import ClusterModel

    node = cfg.get("cluster")
    if node is None or node.get("name") == "none":
        return None
    return _build(node, "cluster", ClusterModel)


def build_optimizer(cfg: DictConfig) -> Callable[[list], Any]:
    """``optimizer=...`` as a factory ``params -> torch.optim.Optimizer`` (a partial), checked
    on a throw-away parameter so that a bad key or value fails at start, in one line."""
    import torch

    from agc_pipeline.validation import require_finite

    node = cfg.get("optimizer")
    if node is None or "_target_" not in node:
        raise ConfigError("optimizer has no _target_: choose optimizer=sgd or optimizer=adamw")
    require_finite(node.get("lr"), "optimizer.lr", 0.0, strict_minimum=True)
    for key, value in node.items():  # e.g. weight_decay=nan: torch takes it, and the first
        values = list(value) if OmegaConf.is_list(value) else [value]  # step's NaN would be
        for v in values:  # blamed on the learning rate (betas: a list)
            if isinstance(v, float):
                require_finite(v, f"optimizer.{key}")
    factory = _instantiate(node, "optimizer")
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as exc:  # torch.optim's own checks, e.g. momentum < 0
        raise ConfigError(f"optimizer: {exc}") from None
    return factory


def build_scheduler(cfg: DictConfig, iterations: int) -> Callable[[Any], Any]:
    """``scheduler=...`` as a factory ``optimizer -> LRScheduler`` for ``iterations``."""
    import functools

    import torch

    node = cfg.get("scheduler")
    if node is None or "_target_" not in node:
        raise ConfigError("scheduler has no _target_: choose scheduler=none|cosine|step")
    factory = functools.partial(_instantiate(node, "scheduler"), iterations=iterations)
    try:
        factory(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))
    except TypeError as exc:
        raise ConfigError(f"scheduler: {exc}") from None
    return factory


def runtime_class(cfg: DictConfig) -> type:
    """The runtime class that ``trainer._target_`` names (e.g. SimulatedRuntime)."""
    node = cfg.get("trainer")
    if node is None or "_target_" not in node:
        raise ConfigError("trainer has no _target_: choose an option, e.g. trainer=simulated")
    target = str(node._target_)
    try:
        cls = get_class(target)
    except Exception as exc:  # noqa: BLE001 - an unknown target is a config error
        raise ConfigError(f"trainer: cannot import {target} ({exc})") from None
    require(isinstance(getattr(cls, "settings_class", None), type) and callable(
        getattr(cls, "step", None)), f"trainer: {target} is not a runtime class (see "
                                     "agc_pipeline.training.runtime)")
    return cls


def build_trainer_settings(cfg: DictConfig) -> Any:
    """The validated settings of ``trainer=...``: the runtime class's ``settings_class``
    built from the other keys; a key the runtime does not have is refused in one line."""
    cls = runtime_class(cfg)
    keys = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(keys, dict)
    keys.pop("_target_")
    known = {f.name for f in fields(cls.settings_class)}
    unknown = sorted(str(key) for key in keys if key not in known)
    require(not unknown, f"trainer.{', trainer.'.join(unknown)} does not apply to "
                         f"trainer={cls.name} (not one of its keys: {', '.join(sorted(known))})")
    return cls.settings_class(**keys)


@dataclass
class Plan:
    """A validated train configuration: everything but the data set and the model."""

    config: dict[str, Any]  #: the resolved configuration
    settings: Any  #: the runtime's settings (its ``settings_class``, a TrainerSettings)
    runtime: type  #: the runtime class (training.runtime.Runtime)
    scheme: Scheme  #: on the assignment (``scheme.assignment``), with reduction m
    decoder: Decoder
    straggler: StragglerModel
    cluster: ClusterModel | None
    make_optimizer: Callable[[list], Any]
    make_scheduler: Callable[[Any], Any]
    seed: int
    m: int


@dataclass
class RunSpec(Plan):
    """Everything a runtime is built from: a :class:`Plan` plus the data set and the model."""

    dataset: Dataset
    model: CodedModel


def _code_choice() -> str | None:
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("code")


def validate(cfg: DictConfig) -> Plan:
    """Validate a train config without building data or models: the app, the settings,
    the code, straggler and cluster models, the optimizer and every config-only rule of
    :mod:`agc_pipeline.rules`. Raises ConfigError."""
    require_app(cfg, "train")
    settings = build_trainer_settings(cfg)
    m = check_m(cfg.m)
    scheme = build_scheme(cfg.scheme, build_assignment(cfg), m)
    plan = Plan(OmegaConf.to_container(cfg, resolve=True), settings, runtime_class(cfg),
                scheme, build_decoder(cfg), build_straggler(cfg), build_cluster(cfg),
                build_optimizer(cfg), build_scheduler(cfg, settings.iterations), int(cfg.seed),
                m)
    check_plan(plan, _code_choice())
    return plan


def build_run(cfg: DictConfig) -> RunSpec:
    """The run of a train config (the composition root): :func:`validate`, then the data
    set and the model, each checked right after it is built."""
    plan = validate(cfg)
    dataset = build_dataset(cfg)
    check_data(dataset, plan.scheme.k, plan.settings.batch_size)
    model = build_model(cfg, dataset)
    check_model_memory(plan, sum(p.numel() for p in model.parameters()))
    return RunSpec(**{f.name: getattr(plan, f.name) for f in fields(Plan)}, dataset=dataset,
                   model=model)


def build_runtime(spec: RunSpec) -> Any:
    """The runtime of ``spec`` (rank 0 of a multi-process runtime)."""
    return spec.runtime(spec)


# ------------------------------------------------------------------ presets of each app
# The apps share one config tree; each experiment preset declares the app it is for (its
# top-level ``app`` key), and the other app refuses it in one line.


def _foreign(app: str, name: str, declared: str) -> str:
    return (f"experiment={name} is a preset of the {declared} app, not of {app}: run "
            f"python -m agc_pipeline.{declared} experiment={name}")


def require_app(cfg: DictConfig, app: str) -> None:
    """Raise ConfigError when ``cfg`` holds a top-level key ``app`` does not know, or was
    composed from another app's experiment preset."""
    check_top_level(cfg, app, cfg.get("seed"))
    declared = cfg.get("app")
    if declared is None or declared == app:
        return
    name = cfg.get("name")
    if HydraConfig.initialized():
        name = HydraConfig.get().runtime.choices.get("experiment", name)
    raise ConfigError(_foreign(app, str(name), str(declared)))


def refuse_foreign_presets(app: str, argv: Sequence[str] | None = None) -> None:
    """Before Hydra composes anything: exit with status 2 and one line when the command line
    (``argv``, default ``sys.argv[1:]``) picks another app's experiment preset (``experiment=X``
    or a sweep ``experiment=X,Y``), whose groups this app may not even have."""
    for arg in sys.argv[1:] if argv is None else argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") != "experiment":
            continue
        for name in value.split(","):
            declared = preset_app(name.strip())
            if declared is not None and declared != app:
                print(f"agc-{app}: configuration error: {_foreign(app, name.strip(), declared)}",
                      file=sys.stderr)
                raise SystemExit(2)


def check_output_dir(path: str | Path, key: str) -> str | None:
    """Create the directory ``path`` (the value of ``key``, e.g. ``hydra.run.dir``) if need be;
    return what is wrong with it (one line naming ``key``), or None when the app can write
    there: an existing file, a parent that is a file, a name the file system refuses (too
    long, invalid), a directory this user may not write."""
    path = Path(path)
    if _is_file(path):
        return f"{key}={path} exists and is not a directory: pass another {key}"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (path, *path.parents) if _is_file(p)), None)
        why = (f"{blocker} is not a directory" if blocker is not None
               else exc.strerror or str(exc))
        return f"{key}={path}: cannot create the directory ({why}): pass another {key}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{key}={path}: this user may not write into the directory: pass another {key}"
    return None


def _is_file(path: Path) -> bool:
    """Whether ``path`` exists and is no directory (False for a name the system refuses)."""
    return os.path.lexists(path) and not os.path.isdir(path)


class OutputDirCheck(Callback):
    """Hydra callback: before Hydra creates the run dir (``hydra.run.dir``) or the sweep dir
    (``hydra.sweep.dir``), refuse one it cannot create or the app cannot write into, in one
    line naming the key, with status 2 (Hydra's own error is an OSError traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            path = OmegaConf.select(config, key)
        except Exception:  # noqa: BLE001 - an interpolation only Hydra resolves: its call
            return
        if path is None:
            return
        problem = check_output_dir(str(path), key)
        if problem is not None:
            app = OmegaConf.select(config, "hydra.help.app_name", default="agc")
            print(f"{app}: configuration error: {problem}", file=sys.stderr)
            raise SystemExit(2)


def run_app(main: Callable[[], Any], app: str) -> Any:
    """Run ``main``; report a ConfigError as one line on stderr and exit with status 2, a file
    that cannot be written (:class:`~agc_pipeline.errors.WriteFailed`; no space left on the
    device, a read-only file system) as one line naming the file, with status 1.

    The folder the app runs in goes first on ``sys.path`` (as ``python -m`` puts it), so that a
    ``_target_`` names a module of the user's own folder under the console scripts too."""
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return main()
    except ConfigError as exc:
        print(f"{app}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except WriteFailed as exc:
        print(f"{app}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:  # a write of another library's (e.g. W&B's files)
        if exc.errno not in STORAGE_ERRNOS:
            raise
        print(f"{app}: {write_failed(exc.filename or '?', exc)}", file=sys.stderr)
        raise SystemExit(1) from None

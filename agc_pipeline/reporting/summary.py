"""The typed, versioned ``summary.json`` of a train run: :class:`RunSummary`.

The train app writes it (:meth:`RunSummary.write`); the report, the sweep skip logic, the
golden checks and the W&B headline read it (:meth:`RunSummary.read`, :meth:`from_dict`) and
use its attributes, never the file's keys. The file holds the same flat keys as before the
schema existed, plus ``"schema": SCHEMA_VERSION`` and ``"clock"``; files without ``schema``
(schema 0) still read: optional fields they lack are None, ``clock`` follows from
``runtime``. A file that lacks a required field is refused with one :class:`ReportError`
naming the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agc_pipeline.reporting.sinks import write_json

#: version of the summary.json layout, written as ``"schema"`` (files without it: 0)
SCHEMA_VERSION = 1
#: the fields a summary must hold to be reported (and the sub-keys the report reads)
REQUIRED = ("final_train_loss", "scheme", "assignment", "decoder", "straggler", "m",
            "wait_for_all", "lr", "model", "dataset", "train_samples")
REQUIRED_KEYS = {"scheme": ("name",), "assignment": ("name",), "decoder": ("name", "rescale"),
                 "straggler": ("name",)}
#: the clock of each runtime (``clock``): the simulated one keeps a virtual clock, the others
#: measure wall-clock time
CLOCKS = ("virtual", "wall")
#: runtime-specific measured fields (:attr:`RunSummary.runtime_fields`): name -> meaning
RUNTIME_FIELDS = {
    # trainer=distributed and trainer=ddp
    "wall_time": "float: wall-clock seconds of the iterations, all sessions",
    "mean_iteration_time": "float: wall_time / iterations",
    # trainer=distributed (parameter server and workers)
    "mean_decode_time": "float: the PS's decoding seconds per iteration",
    "decode_fraction": "float | None: decoding seconds / wall_time (None: no wall time)",
    "late_messages": "int: worker messages that arrived after their iteration closed",
    "rejected_messages": "int: worker messages the PS refused (damaged or foreign)",
    "total_bytes_received": "int: bytes the PS received from the workers",
    "dead_workers": "list[int]: workers reported dead",
    "events": "list[dict]: worker events (``worker``, ``event``, ...)",
    "distributed": "dict: workers, backend, launch, wait, s, deadline_s, time_scale, "
                   "straggle, timeout_s, wire_dtype, param_dtype",
    # trainer=ddp
    "total_bytes_per_rank": "int: all-reduce bytes each rank sent",
    "mean_sleep_time": "float: injected straggler sleep per iteration",
    "ddp": "dict: workers, backend, launch, time_scale, timeout_s, bucket_cap_mb, buckets, "
           "bytes_per_rank_per_iteration",
}


class ReportError(ValueError):
    """The report cannot be made (no runs, damaged inputs under ``strict``, a bad ``--out``),
    or a summary.json is not the summary of a train run."""


@dataclass(frozen=True)
class Alpha:
    """The Monte Carlo estimate of α (Section VII): ``E[B_F R] ≈ value · F``. Like every
    measured number, None where it was not finite (one draw: no standard error)."""

    value: float | None
    stderr: float | None
    #: ‖mean(B_F R) − α F‖ / ‖F‖ (None in files written before it was measured)
    residual: float | None = None
    #: the number of draws (None in files written before it was recorded)
    samples: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """summary.json's ``alpha`` object."""
        return {"value": self.value, "stderr": self.stderr, "residual": self.residual,
                "samples": self.samples}


@dataclass
class RunSummary:
    """One train run's ``summary.json``. Required fields first (:data:`REQUIRED`); the
    others default to None (absent from older files, or not measured by the runtime)."""

    # -- the set-up (required: the report groups and labels runs by them)
    #: final training loss over the whole training set, or over ``final_train_loss_samples``
    #: of its samples (trainer.train_loss_samples); None: not finite, e.g. diverged
    final_train_loss: float | None
    #: ``scheme.describe()``: ``name`` (required), ``m``, ``epsilon``, ``variant``, ...
    scheme: dict[str, Any]
    #: ``assignment.summary()``: ``name`` (required), ``kind``, ``n``, ``k``, ``delta``, ...
    assignment: dict[str, Any]
    #: ``{"name", "rescale"}`` of the decoder
    decoder: dict[str, Any]
    #: ``straggler.describe()``: ``name`` (required), ``seed``, ``q``, ``s``, ``wait_for``, ...
    straggler: dict[str, Any]
    m: int
    wait_for_all: bool
    lr: float
    #: the model's class name
    model: str
    dataset: str
    train_samples: int
    # -- the run
    schema: int = SCHEMA_VERSION
    name: str | None = None
    #: completed | diverged | interrupted | workers_lost | failed (None: older files)
    status: str | None = None
    error: str | None = None
    test_accuracy: float | None = None
    test_mse: float | None = None
    test_loss: float | None = None
    iterations: int | None = None
    #: this invocation's seconds, end to end
    seconds: float | None = None
    #: the iterations' seconds, all sessions
    train_seconds: float | None = None
    #: the simulated clock at the end (None for runtimes that measure wall-clock time)
    virtual_time: float | None = None
    #: bytes the workers sent to the PS (None for trainer=ddp: no PS)
    total_bytes_to_ps: int | None = None
    mean_survivors: float | None = None
    skipped_iterations: int | None = None
    #: mean relative error of the decoded gradient (None: trainer.grad_error=false)
    mean_grad_error: float | None = None
    alpha: Alpha | None = None
    alpha_residual: float | None = None
    #: whether the decoded gradient was divided by α (decoder.rescale)
    rescaled: bool | None = None
    #: the samples ``final_train_loss`` averages when fewer than all (trainer.train_loss_samples;
    #: absent: all ``train_samples``)
    final_train_loss_samples: int | None = None
    #: d, the model's parameter count
    parameters: int | None = None
    message_length: int | None = None
    seed: int | None = None
    #: the runtime's name: simulated | distributed | ddp
    runtime: str | None = None
    #: what the run's time is: ``virtual`` (simulated clock) or ``wall`` (measured)
    clock: str | None = None
    #: runtime-specific measured fields, keys documented in :data:`RUNTIME_FIELDS`
    runtime_fields: dict[str, Any] = field(default_factory=dict)
    # -- reproducibility
    #: Hydra's config-group choices (``code``, ``experiment``, ...)
    choices: dict[str, Any] | None = None
    #: library versions and provenance (git, host, command), see reporting.provenance
    versions: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    #: the resolved config
    config: dict[str, Any] | None = None
    #: this invocation's seconds outside the iterations (build, α, start-up, evaluation)
    startup_seconds: float | None = None
    #: torch's intra-op threads of the run (trainer.threads, or the cores free at its start;
    #: None in summaries written before it was recorded)
    threads: int | None = None
    #: the flat W&B config keys (code, scheme, n, k, m, runtime, seed, ...)
    keys: dict[str, Any] | None = None
    #: where the W&B sink keeps the run (None: not logged to W&B)
    wandb: dict[str, Any] | None = None

    # ------------------------------------------------------------------ derived values

    @property
    def wall_time(self) -> float | None:
        """Wall-clock seconds of the iterations (None for the simulated runtime)."""
        return self.runtime_fields.get("wall_time")

    @property
    def setup_seed(self) -> Any:
        """The seed, else the config's (None when neither is recorded)."""
        return self.seed if self.seed is not None else (self.config or {}).get("seed")

    def with_runtime(self, extra: dict[str, Any]) -> RunSummary:
        """This summary with a runtime's ``summary_extra()``: the fields it names (e.g.
        ``runtime``, ``clock``, ``virtual_time``) replaced, the rest in ``runtime_fields``."""
        known = {k: v for k, v in extra.items() if k in _FIELDS}
        rest = {k: v for k, v in extra.items() if k not in _FIELDS}
        return replace(self, **known, runtime_fields={**self.runtime_fields, **rest})

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        """The flat summary.json object (runtime fields at the top level)."""
        out: dict[str, Any] = {}
        for name in ORDER:
            if name == "runtime_fields":
                out.update(self.runtime_fields)
            elif name == "alpha":
                out["alpha"] = None if self.alpha is None else self.alpha.to_dict()
            elif name in OPTIONAL and getattr(self, name) is None:
                continue  # a summary written before the field existed reads back as it was
            else:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "summary") -> RunSummary:
        """The summary in ``data`` (a parsed summary.json); ``source`` names it in errors.
        Raises :class:`ReportError` for a missing required field, a wrong type or a newer
        schema."""
        if not isinstance(data, dict):
            raise ReportError(f"{source}: not a JSON object")
        missing = [k for k in REQUIRED if k not in data]
        missing += [f"{k}.{sub}" for k, subs in REQUIRED_KEYS.items()
                    if isinstance(data.get(k), dict) for sub in subs if sub not in data[k]]
        if missing:
            raise ReportError(f"{source}: not the summary of a train run (no "
                              f"{', '.join(missing)})")
        schema = data.get("schema", 0)
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 0:
            raise ReportError(f"{source}: summary field schema is {schema!r}, not a "
                              "non-negative int")
        if schema > SCHEMA_VERSION:
            raise ReportError(f"{source}: summary schema {schema!r} is newer than this "
                              f"agc_pipeline reads ({SCHEMA_VERSION}); update agc_pipeline")
        values = {k: v for k, v in data.items() if k in _FIELDS}
        values["schema"] = schema
        runtime_fields = {k: v for k, v in data.items() if k not in _FIELDS}
        alpha = data.get("alpha")
        values["alpha"] = _alpha(alpha, source) if alpha is not None else None
        if values.get("clock") is None:  # older files: the runtime tells the clock
            values["clock"] = "virtual" if data.get("runtime") in (None, "simulated") else "wall"
        summary = cls(**values, runtime_fields=runtime_fields)
        _check_types(summary, source)
        return summary

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        """The summary in the file ``path``: :class:`ReportError` naming the file when it
        cannot be read, is not JSON, or is not the summary of a train run."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReportError(f"{path}: cannot be read ({exc})") from None
        if not text.strip():
            raise ReportError(f"{path}: empty")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON, truncated or damaged ({exc})") from None
        return cls.from_dict(data, path)

    def write(self, path: Path) -> None:
        """Write :meth:`to_dict` to ``path`` atomically (strict JSON; NaN/inf → null)."""
        write_json(Path(path), self.to_dict())


#: the order of the keys in summary.json (the runtime's fields follow its name and clock)
ORDER = ("schema", "name", "status", "error", "final_train_loss", "final_train_loss_samples",
         "test_accuracy", "test_mse",
         "test_loss", "iterations", "seconds", "train_seconds", "virtual_time",
         "total_bytes_to_ps", "mean_survivors", "skipped_iterations", "mean_grad_error",
         "alpha", "alpha_residual", "rescaled", "scheme", "assignment", "decoder", "straggler",
         "m", "wait_for_all", "lr", "model", "parameters", "message_length", "dataset",
         "train_samples", "seed", "runtime", "clock", "runtime_fields", "choices", "versions",
         "provenance", "config", "startup_seconds", "threads", "keys", "wandb")
#: fields added after schema 1, written only when set
OPTIONAL = ("threads", "final_train_loss_samples")
#: the top-level keys that are fields of their own (every other key is a runtime field)
_FIELDS = frozenset(ORDER) - {"runtime_fields"}
#: the types each typed field may hold (None is allowed for every optional field)
_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "final_train_loss": _NUMBER, "scheme": (dict,), "assignment": (dict,), "decoder": (dict,),
    "straggler": (dict,), "m": (int,), "wait_for_all": (bool,), "lr": _NUMBER, "model": (str,),
    "dataset": (str,), "train_samples": (int,), "name": (str,), "status": (str,),
    "error": (str,), "test_accuracy": _NUMBER, "test_mse": _NUMBER, "test_loss": _NUMBER,
    "iterations": (int,), "seconds": _NUMBER, "train_seconds": _NUMBER,
    "virtual_time": _NUMBER, "total_bytes_to_ps": _NUMBER, "mean_survivors": _NUMBER,
    "skipped_iterations": (int,), "mean_grad_error": _NUMBER, "alpha_residual": _NUMBER,
    "rescaled": (bool,), "parameters": (int,), "message_length": (int,), "seed": (int,),
    "runtime": (str,), "clock": (str,), "choices": (dict,), "versions": (dict,),
    "provenance": (dict,), "config": (dict,), "startup_seconds": _NUMBER, "keys": (dict,),
    "wandb": (dict,), "threads": (int,), "final_train_loss_samples": (int,),
}
#: required fields whose value may still be None (a non-finite loss is written as null)
_NULLABLE_REQUIRED = ("final_train_loss",)


def _check_types(summary: RunSummary, source: str | Path) -> None:
    """Raise :class:`ReportError` naming the first field of the wrong type."""
    for name, types in _TYPES.items():
        value = getattr(summary, name)
        if value is None and (name not in REQUIRED or name in _NULLABLE_REQUIRED):
            continue
        is_bool = isinstance(value, bool)
        if not isinstance(value, types) or (is_bool and bool not in types):
            raise ReportError(f"{source}: summary field {name} is {value!r}, not "
                              f"{' or '.join(t.__name__ for t in types)}")
    if summary.clock not in CLOCKS:
        raise ReportError(f"{source}: summary field clock is {summary.clock!r}, not one of "
                          f"{', '.join(CLOCKS)}")


def _alpha(data: Any, source: str | Path) -> Alpha:
    keys = ("value", "stderr", "residual", "samples")
    if not isinstance(data, dict) or "value" not in data or not all(
            data.get(k) is None or isinstance(data[k], _NUMBER) for k in keys):
        raise ReportError(f"{source}: summary field alpha is {data!r}, not an object with "
                          f"numbers (or null) {', '.join(keys)}")
    return Alpha(*(data.get(k) for k in keys))

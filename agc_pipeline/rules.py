"""Every rule that spans components of a run (trainer, code, straggler model, cluster, data,
model), in one place.

:func:`check_plan` runs the rules that need only the configuration and the cheap objects
built from it (settings, assignment, scheme, decoder, straggler and cluster models): the
train app's :func:`~agc_pipeline.build.validate` calls it before any data set or model is
built. :func:`check_data` and :func:`check_trainable` need the built data and model; they run
right after building them, still before training. A runtime whose settings span other
components declares them as its static ``check_plan(plan)`` (e.g. DDP: one rank per worker),
which :func:`check_plan` calls; the rules module knows no runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agc_pipeline.conf_path import unknown_key_error
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.validation import is_int, require_int, require_memory

if TYPE_CHECKING:
    import torch

    from agc_pipeline.coding.decoding import Decoder
    from agc_pipeline.data import Dataset

__all__ = ["SYMMETRIC_KINDS", "check_alpha", "check_data", "check_m", "check_model_memory",
           "check_model_task", "check_plan", "check_trainable"]

#: assignment families for which E[B_F R] = α F is proven (Section VII: BIBDs, strongly
#: regular graphs, coset graphs, circulant/cyclic assignments); decoder.rescale relies on it
SYMMETRIC_KINDS = ("bibd", "srg", "coset", "cyclic")


def check_m(m: Any) -> int:
    """``m`` (the communication reduction factor) is a positive integer."""
    require(is_int(m) and m >= 1, f"m must be a positive integer (got {m!r})")
    return int(m)


def code_bytes(n: int, k: int, m: int) -> int:
    """Bytes of a coded run's matrices (float64): F and B R (mk × m each), eye(m) in F's
    construction, B (mk × n)."""
    return 8 * (2 * k * m * m + m * m + k * m * n)


def check_plan(plan: Any, code: str | None = None) -> None:
    """The config-only rules of a run, a :class:`~agc_pipeline.build.Plan` (``code``: the
    ``code=`` choice, for messages)."""
    assignment, settings, runtime = plan.scheme.assignment, plan.settings, plan.runtime
    n, k, m = assignment.n, assignment.k, plan.m
    require_memory(f"m={m} (n = {n}, k = {k})", code_bytes(n, k, m),
                   "the coding matrices grow as k·m² (F and B R are mk × m): use a smaller m")
    built_m = assignment.params.get("m")
    require(assignment.kind != "coset" or built_m == plan.m,
            f"the coset graph was built for m = {built_m} but m = {plan.m}; the coset graph "
            "(k, m, delta) has n = m·k workers (set assignment.m=${m})")
    if plan.cluster is not None:
        require(runtime.virtual_clock,
                f"cluster={plan.cluster.name} sets the simulated trainer's virtual clock; "
                "trainer=simulated only (other runtimes measure real time): use cluster=none")
        require(getattr(plan.straggler, "wait_for", None) != "deadline",
                f"cluster={plan.cluster.name} retimes the straggler model's survivors, which "
                "straggler.wait_for=deadline chooses by arrival time: use wait_for=first")
    if runtime.coded:
        require(not plan.decoder.rescale or settings.alpha_samples >= 2,
                "decoder.rescale=true needs trainer.alpha_samples ≥ 2 (α is estimated by "
                "Monte Carlo at start-up)")
    else:
        _uncoded_rules(plan, code)
    runtime_rules = getattr(runtime, "check_plan", None)
    if runtime_rules is not None:  # the runtime's own rules (its settings against the rest)
        runtime_rules(plan)


def _uncoded_rules(plan: Any, code: str | None) -> None:
    """A runtime without a code (``coded = False``, e.g. DDP) trains on the uncoded
    partition, waiting for every worker (Section II's uncoded baseline)."""
    scheme, a = plan.scheme, plan.scheme.assignment
    wait_for_all = bool(getattr(plan.settings, "wait_for_all", False))
    if a.kind == "identity" and scheme.name == "stack" and plan.m == 1 and wait_for_all:
        return
    name = plan.runtime.name
    raise ConfigError(
        f"trainer={name} is plain data-parallel SGD on the uncoded partition: it needs "
        "code=uncoded_wait (assignment=identity, scheme=stack, m=1, "
        f"trainer.wait_for_all=true); got {f'code={code}: ' if code else ''}"
        f"assignment={a.kind}, scheme={scheme.name}, m={plan.m}, "
        f"wait_for_all={str(wait_for_all).lower()}")


def check_model_memory(plan: Any, d: int) -> None:
    """The coded gradient's buffers for a model of ``d`` parameters fit in memory: m blocks
    of ⌈d/m⌉ values (float64), k of them with ``trainer.coded_gradient=per_subset``."""
    if not plan.runtime.coded:
        return
    m, k = plan.m, plan.scheme.assignment.k
    per_subset = getattr(plan.settings, "coded_gradient", None) == "per_subset"
    need = 8 * (k if per_subset else 1) * m * -(-int(d) // m)
    require_memory(f"a model of d = {d} parameters with m={m}"
                   + (f", k = {k} and trainer.coded_gradient=per_subset" if per_subset else ""),
                   need, "use a smaller model" + (", or trainer.coded_gradient=weighted"
                                                  if per_subset else ""))


def check_data(dataset: Dataset, k: int, batch_size: int | None) -> None:
    """The data set holds the k subsets D_i, and a minibatch fits in one."""
    n_train = int(dataset.y_train.shape[0])
    require(k <= n_train,
            f"assignment has k = {k} data subsets but the data set has only "
            f"{n_train} training samples (each subset needs at least one); use a smaller "
            "design or a larger dataset.train_size")
    subset = n_train // k
    require(batch_size is None or batch_size <= subset,
            f"trainer.batch_size={batch_size} exceeds the {subset} samples of each "
            f"data subset (N = {n_train} split into k = {k}); use at most "
            f"{subset} or null (the whole subset)")


def check_model_task(name: str, task: Any, dataset: Dataset, hint: str = "") -> None:
    """The model's task (classification | regression) is the data set's."""
    if isinstance(task, str) and task != dataset.task:
        raise ConfigError(f"model {name} is a {task} model but dataset {dataset.name} is a "
                          f"{dataset.task} data set{hint}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def check_trainable(model: Any, dataset: Dataset, x: torch.Tensor, y: torch.Tensor) -> None:
    """The model contract, on a few of the data set's samples (``x, y``), at start and in one
    line naming the model and the rule it breaks: trainable parameters; ``model(x)`` returns
    a tensor with one row per sample (any exception it raises is reported, not re-raised);
    ``loss_sum`` returns a scalar that depends on the parameters."""
    import torch

    from agc_pipeline.models import WithLoss

    name = type(model.module if isinstance(model, WithLoss) else model).__name__
    require(any(p.requires_grad for p in model.parameters()),
            f"model {name} has no trainable parameters (nothing for SGD to update)")
    try:
        out = model(x)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward is one line
        raise ConfigError(f"model {name} cannot train on dataset {dataset.name} (samples of "
                          f"shape {tuple(x.shape[1:])}): {_first_line(exc)}") from None
    require(isinstance(out, torch.Tensor) and out.dim() >= 1 and out.shape[0] == x.shape[0],
            f"model {name}: forward must return a tensor with one row per sample (dim 0 = "
            f"{x.shape[0]} samples; got {_describe(out)})")
    try:
        loss = model.loss_sum(out, y)
    except Exception as exc:  # noqa: BLE001 - e.g. outputs that do not fit the loss
        raise ConfigError(f"model {name} cannot train on dataset {dataset.name}: its loss "
                          f"fails on the outputs: {_first_line(exc)}") from None
    require(isinstance(loss, torch.Tensor) and loss.dim() == 0,
            f"model {name}: loss_sum must return a scalar (got {_describe(loss)})")
    require(loss.requires_grad,
            f"model {name}: the loss does not depend on the parameters (is the output "
            "detached, or computed under torch.no_grad()?)")


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"a tensor of shape {tuple(shape)}" if shape is not None else type(value).__name__


def check_alpha(decoder: Decoder, alpha: float) -> None:
    """``decoder.rescale`` divides by α: it must not vanish (Section VII)."""
    require(not decoder.rescale or abs(alpha) > 1e-8,
            f"decoder.rescale=true but α ≈ {alpha:.3g}: the decoded gradient "
            "is zero on average and cannot be rescaled")


def check_top_level(keys: Any, app: str, seed: Any = None) -> None:
    """Every top-level key of ``keys`` is one ``app`` knows, and ``seed`` (the run's
    top-level seed, which the data set, model and straggler seeds take) a non-negative int."""
    require((problem := unknown_key_error([str(k) for k in keys], app)) is None, str(problem))
    if seed is not None:
        require_int(seed, "seed", 0)

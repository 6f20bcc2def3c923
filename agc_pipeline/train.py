"""The ``train`` app: coded SGD on a simulated cluster (paper Sections VII–VIII, Fig. 6) or on real
processes (``trainer=distributed``: a parameter server and n workers; ``trainer=sharded``),
and the uncoded DDP baseline (``trainer=ddp``: DistributedDataParallel over n processes).

    python -m agc_pipeline.train experiment=fig6_bibd7            # one run
    torchrun --standalone --nproc_per_node=8 -m agc_pipeline.train trainer=distributed
    python -m agc_pipeline.train trainer=ddp code=uncoded_wait    # DDP over n processes
    python -m agc_pipeline.train -m experiment=fig6_bibd7         # Fig. 6: schemes × seeds
    python -m agc_pipeline.train -m experiment=compare_codes      # baselines × q × seeds
    python -m agc_pipeline.train trainer.resume=true hydra.run.dir=<interrupted run dir>

Writes ``metrics.jsonl`` (one row per logged iteration), ``summary.json`` and
``checkpoint.pt`` in the Hydra run dir; with ``logger=wandb`` also a W&B run (offline by
default). A run locks its run dir (a second run into it refuses) and refuses a run dir that
already holds a run unless ``trainer.resume=true`` (continue it) or ``trainer.overwrite=true``
(replace it); a re-run multirun replaces only its unfinished jobs. Exit status: 2 for an
impossible configuration, 3 when training diverges (NaN/Inf gradient), 4 when fewer than
``trainer.min_workers`` distributed workers are alive (``trainer=ddp``: any lost rank), 130
when interrupted (SIGINT/SIGTERM stop at the end of the iteration); a checkpoint is saved in
the last three cases; 1 when a file of the run cannot be written (disk full: one line naming
the file; the previous checkpoint is kept). In a multirun a diverged job (or one that lost
its workers) is reported and the sweep goes on (its summary.json says ``"status":
"diverged"`` or ``"workers_lost"``).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from agc_pipeline.build import (
    RunSpec,
    build_run,
    build_runtime,
    refuse_foreign_presets,
    run_app,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import ConfigError, WriteFailed, require
from agc_pipeline.reporting.jobs import app_job, run_group, run_name, save_run_record
from agc_pipeline.reporting.provenance import record
from agc_pipeline.reporting.sinks import JsonlSink, MultiSink, check_logger, make_logger_sink
from agc_pipeline.reporting.summary import Alpha, RunSummary
from agc_pipeline.reporting.sweeps import limit_threads, skip_finished_job
from agc_pipeline.rules import SYMMETRIC_KINDS
from agc_pipeline.training.checkpoint import (
    CHECKPOINT_NAME,
    RUN_FILES,
    check_metrics_rows,
    config_differences,
    load_checkpoint,
    metrics_rows_before,
    rewrite_metrics,
    run_dir_lock,
)
from agc_pipeline.training.coded_step import TrainingDiverged, block_length
from agc_pipeline.training.distributed import WorkersLost, torchrun_env
from agc_pipeline.training.loop import TrainingInterrupted, fit
from agc_pipeline.training.runtime import Runtime
from agc_pipeline.training.startup import StartupLost

log = logging.getLogger("agc_pipeline.train")

#: config keys that may change when a run is resumed (everything else must match)
RESUMABLE_CHANGES = ("trainer.iterations", "trainer.resume", "trainer.progress",
                     "trainer.log_every", "trainer.eval_every", "trainer.checkpoint_every",
                     "trainer.device", "logger", "trainer.timeout_s", "trainer.startup_timeout_s",
                     "trainer.start_method", "trainer.fault", "trainer.grad_error",
                     "trainer.overwrite", "trainer.threads", "trainer.skip_finished",
                     "trainer.min_workers", "trainer.reshard", "trainer.train_loss_samples",
                     "app", "extras")
#: the x-axes of a train run's W&B charts (``iteration`` is every metric's default)
X_AXES = ("iteration", "virtual_time", "wall_time", "mb_to_ps")


def build_trainer(cfg: DictConfig) -> Runtime:
    """Every object of the run, built and validated before any training
    (:func:`~agc_pipeline.build.build_run`), inside the runtime that ``trainer=`` names."""
    return build_runtime(build_run(cfg))


def run_training(cfg: DictConfig, out_dir: Path, replace: bool = False) -> dict[str, Any]:
    """Train with ``cfg``; write metrics.jsonl, summary.json and checkpoint.pt in ``out_dir``.

    Holds the lock of ``out_dir`` throughout. A run already in ``out_dir`` is continued
    (``trainer.resume=true``), replaced (``trainer.overwrite=true``, or ``replace``: the app
    passes it for multirun jobs, which re-run into their directory only when unfinished or
    changed) or refused. Returns the summary. Raises ConfigError (bad configuration, before
    training), TrainingDiverged, TrainingInterrupted or WorkersLost (after a checkpoint).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with run_dir_lock(out_dir):
        return _run_locked(cfg, out_dir, replace, started)


def _run_locked(cfg: DictConfig, out_dir: Path, replace: bool,
                started: float) -> dict[str, Any]:
    runtime = build_trainer(cfg)
    check_logger(cfg.get("logger"))  # before anything is written into the run dir
    state, settings = runtime.state, runtime.settings
    config = runtime.spec.config
    metrics, checkpoint = out_dir / "metrics.jsonl", out_dir / CHECKPOINT_NAME
    for stale in out_dir.glob("rendezvous-*"):  # a killed PS's (the lock: nobody uses it)
        stale.unlink(missing_ok=True)
    wandb_id, logged_rows, resume = None, 0, settings.resume
    if resume and not checkpoint.exists():
        require(not metrics.exists(), f"trainer.resume=true but {out_dir} holds metrics.jsonl "
                                      f"and no {CHECKPOINT_NAME}; cannot continue that run")
        log.warning("trainer.resume=true but there is no run in %s: starting a fresh one "
                    "(pass hydra.run.dir=<the interrupted run's dir> to continue one)", out_dir)
        resume = False
    if resume:
        saved = load_checkpoint(checkpoint)
        changed = [key for key in config_differences(saved["config"], config)
                   if not key.startswith(RESUMABLE_CHANGES)]
        changed = _refused_changes(runtime, config, changed)
        require(not changed, f"trainer.resume=true: the configuration differs from the "
                             f"checkpoint's in {', '.join(changed)}"
                             f"{_nodes_rule(runtime, changed)}")
        done = int(saved["iteration"])
        require(settings.iterations >= done,
                f"trainer.resume=true with trainer.iterations={settings.iterations}, "
                f"but the checkpoint in {out_dir} is at iteration {done}: a run cannot be "
                f"shortened (pass trainer.iterations ≥ {done}, or start a new run)")
        try:
            runtime.load_state_dict(saved)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # another model's
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"checkpoint {checkpoint} does not fit this run ({first}); "
                              "delete it to start over, or pass another hydra.run.dir") from None
        wandb_id = saved.get("wandb_id")
        rows = metrics_rows_before(metrics, state.iteration)
        check_metrics_rows(metrics, len(rows), saved.get("metrics_rows"), done)
        save_run_record(cfg, out_dir)  # every check passed: the run dir is this run's now
        logged_rows = rewrite_metrics(metrics, rows) if metrics.exists() else 0
        log.info("resuming at iteration %d (%d metrics rows kept)", done, logged_rows)
    else:
        _clear_previous_run(out_dir, replace or settings.overwrite)
        save_run_record(cfg, out_dir)
        runtime.estimate_alpha()
    _report_alpha(runtime)
    keys = run_keys(runtime, cfg)
    logger_sink = make_logger_sink(cfg.get("logger"), out_dir, config,
                                   group=run_group(str(cfg.name), out_dir), job_type="train",
                                   name=run_name(_run_name(runtime.spec)), resume_id=wandb_id,
                                   keys=keys, x_axes=X_AXES, step_metric="iteration")
    sink = MultiSink([JsonlSink(metrics, append=resume), logger_sink])
    wandb_run = logger_sink.describe()
    extra = {"config": config, "wandb_id": wandb_run and wandb_run["id"]}
    trained = state.totals.seconds  # training seconds of earlier sessions (resume)
    status, error = "running", None
    try:
        fit(runtime, sink, checkpoint, extra, logged_rows, config=config, run_dir=out_dir)
        status = "completed"
    except BaseException as exc:
        status = ("diverged" if isinstance(exc, TrainingDiverged) else
                  "interrupted" if isinstance(exc, TrainingInterrupted | KeyboardInterrupt)
                  else "workers_lost" if isinstance(exc, WorkersLost | StartupLost) else "failed")
        error = str(exc) or type(exc).__name__
        raise
    finally:
        seconds = time.perf_counter() - started
        summary = _summary(runtime, cfg, config, status, error, seconds)
        # this invocation's seconds outside the iterations: building the run, alpha, the
        # workers' start-up, the final evaluation (train_seconds: the iterations)
        summary.startup_seconds = max(seconds - (state.totals.seconds - trained), 0.0)
        summary.keys, summary.wandb = keys, wandb_run
        summary.threads = _torch_threads()
        _close_run(status, summary, sink, out_dir)
    test = summary.test_accuracy
    log.info("final train loss %.4f, test accuracy %s, %d iterations in %.1f s -> %s",
             summary.final_train_loss, "n/a" if test is None else f"{test:.4f}",
             summary.iterations, summary.seconds, out_dir)
    return summary.to_dict()


def _refused_changes(runtime: Runtime, new: dict[str, Any], changed: list[str]) -> list[str]:
    """The config keys whose change a resume refuses, of ``changed``: none when only
    ``assignment.n`` and the runtime's ``reshard_keys`` changed and it re-shards
    (``trainer=sharded``), which then needs ``trainer.reshard=true`` (else a one-line
    ConfigError naming it)."""
    nodes = ("assignment.n", *runtime.reshard_keys)
    if "assignment.n" not in changed or not runtime.reshard_keys \
            or any(key not in nodes for key in changed):
        return changed
    after = new["assignment"]["n"]
    require(getattr(runtime.settings, "reshard", False) is True,
            f"trainer.resume=true with assignment.n={after}, another number of nodes than "
            f"the checkpoint's run: pass trainer.reshard=true to continue it on {after} "
            "nodes (re-sharding the optimizer state), or the checkpoint's assignment.n")
    return []


def _nodes_rule(runtime: Runtime, changed: list[str]) -> str:
    """The rule on resuming with another ``assignment.n`` (when it is among ``changed``)."""
    if "assignment.n" not in changed:
        return ""
    if runtime.reshard_keys:
        return (" (trainer.reshard=true continues on another assignment.n, changing besides "
                f"it only {', '.join(runtime.reshard_keys)})")
    return (f" (trainer={runtime.name} resumes on the checkpoint's number of nodes; only "
            "trainer=sharded continues on another, with trainer.reshard=true)")


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _close_run(status: str, summary: RunSummary, sink: MultiSink, out_dir: Path) -> None:
    """Write summary.json, give the summary to the sinks and close them."""
    try:
        _write_last(status, lambda: summary.write(out_dir / "summary.json"))
        sink.summary(headline(summary))
    finally:
        _write_last(status, sink.close)


def _write_last(status: str, write: Callable[[], None]) -> None:
    """``write()`` a file at the end of a run; when the run is ending with an error already
    (e.g. the checkpoint could not be written: disk full), a second failure is logged and
    the first one stays the one reported."""
    try:
        write()
    except WriteFailed as exc:
        if status == "completed":
            raise
        log.warning("%s", exc)


def _clear_previous_run(out_dir: Path, replace: bool) -> None:
    """Refuse a fresh run into a directory that holds a run, unless ``replace``: then delete
    that run's files (so that the directory never mixes two runs)."""
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not found:
        return
    if not replace:
        raise ConfigError(f"{out_dir} already holds a run ({_describe_run(out_dir, found)}): "
                          "continue it with trainer.resume=true, pass a new hydra.run.dir, or "
                          "replace it with trainer.overwrite=true")
    log.warning("replacing the run in %s (%s)", out_dir, _describe_run(out_dir, found))
    for name in (*found, "workers.json"):
        (out_dir / name).unlink(missing_ok=True)


def _describe_run(out_dir: Path, found: list[str]) -> str:
    try:
        summary = RunSummary.read(out_dir / "summary.json")
    except ValueError:
        return ", ".join(found)
    return f"{summary.status} after {summary.iterations} iterations"


def _report_alpha(runtime: Runtime) -> None:
    """Log α; warn when ``decoder.rescale`` relies on E[B_F R] = α F where no result of the
    paper's Section VII proves it (the measured residual says how far off it is)."""
    alpha = runtime.alpha
    if alpha is None:
        return
    rescale = runtime.spec.decoder.rescale
    log.info("alpha = %.4f ± %.4f (residual %.3g, %d draws)%s", alpha.value, alpha.stderr,
             alpha.residual, alpha.samples,
             "; dividing the decoded gradient by it" if rescale else "")
    kind = runtime.spec.scheme.assignment.kind
    if rescale and kind not in SYMMETRIC_KINDS:
        log.warning("decoder.rescale=true assumes E[B_F R] = alpha F, proven only for "
                    "symmetric assignments (%s); on this %s assignment the measured residual "
                    "|E[B_F R] - alpha F| / |F| is %.3g (%d draws): the rescaled gradient is "
                    "biased by about that much", ", ".join(SYMMETRIC_KINDS), kind,
                    alpha.residual, alpha.samples)


def _run_name(spec: RunSpec) -> str:
    return f"{spec.scheme.name}-{spec.scheme.assignment.name}-m{spec.m}-seed{spec.seed}"


def run_keys(runtime: Runtime, cfg: DictConfig) -> dict[str, Any]:
    """The flat, groupable keys of the run's W&B config: the code (the ``code=`` preset, else
    the scheme), scheme, assignment family, n, k, m, the straggler model with its s and q,
    runtime, model class, d, seed and preset."""
    spec = runtime.spec
    scheme = spec.scheme
    straggler = spec.straggler.describe()
    choices = _choices()
    return {"app": "train", "preset": choices.get("experiment"),
            "code": choices.get("code") or scheme.name, "scheme": scheme.name,
            "assignment": scheme.assignment.kind, "n": scheme.n, "k": scheme.k, "m": spec.m,
            "straggler": straggler.get("name"), "s": straggler.get("s"),
            "q": straggler.get("q"), "runtime": runtime.name,
            "model": type(spec.model).__name__, "d": runtime.d, "decoder": spec.decoder.name,
            "dataset": spec.dataset.name, "seed": int(cfg.seed)}


def headline(summary: RunSummary) -> dict[str, Any]:
    """The W&B summary of a train run: summary.json's scalars, α (value and standard error)
    and ``train_loss`` = ``final_train_loss`` (not the last logged row's, measured before the
    last update)."""
    out = {k: v for k, v in summary.to_dict().items() if not isinstance(v, dict | list)}
    alpha = summary.alpha
    out["alpha"] = None if alpha is None else alpha.value
    out["alpha_stderr"] = None if alpha is None else alpha.stderr
    out["train_loss"] = summary.final_train_loss
    sent = summary.total_bytes_to_ps  # None for trainer=ddp (no PS)
    out["mb_to_ps"] = None if sent is None else sent / 1e6
    return out


def _summary(runtime: Runtime, cfg: DictConfig, config: dict[str, Any], status: str,
             error: str | None, seconds: float) -> RunSummary:
    """summary.json: results, code description and reproducibility information."""
    spec, state, work, settings = runtime.spec, runtime.state, runtime.workload, runtime.settings
    tot, alpha = state.totals, runtime.alpha
    done = max(tot.iterations, 1)
    final, final_loss = _final_metrics(runtime, status)
    decoder = spec.decoder
    return RunSummary(
        name=str(cfg.name), status=status, error=error,
        final_train_loss=final_loss,
        final_train_loss_samples=work.train_loss_count(settings.train_loss_samples),
        test_accuracy=final.get("test_accuracy"), test_mse=final.get("test_mse"),
        test_loss=final["test_loss"],
        # seconds: this invocation, end to end; train_seconds: training, all sessions
        iterations=tot.iterations, seconds=seconds, train_seconds=tot.seconds,
        virtual_time=state.virtual_time,
        total_bytes_to_ps=tot.bytes_to_ps, mean_survivors=tot.survivors / done,
        skipped_iterations=tot.skipped,
        # runtimes without trainer.grad_error (DDP: the all-reduced gradient is exact)
        mean_grad_error=(tot.grad_error / done if getattr(settings, "grad_error", False)
                         else None),
        alpha=None if alpha is None else Alpha(**alpha.as_dict()),
        # ‖mean(B_F R) − α F‖ / ‖F‖: what decoder.rescale's assumption misses (Section VII)
        alpha_residual=None if alpha is None else alpha.residual,
        rescaled=decoder.rescale,
        scheme=spec.scheme.describe(), assignment=spec.scheme.assignment.summary(),
        decoder={"name": decoder.name, "rescale": decoder.rescale},
        straggler=spec.straggler.describe(), m=spec.m,
        wait_for_all=getattr(settings, "wait_for_all", False), lr=settings.lr,
        model=type(spec.model).__name__, parameters=runtime.d,
        message_length=block_length(runtime.d, spec.m), dataset=spec.dataset.name,
        train_samples=work.num_samples, seed=int(cfg.seed),
        choices=_choices(),
        **record(),  # versions (torch, numpy, hydra, wandb, ...) and provenance (git, host)
        config=config,
    ).with_runtime({"clock": "virtual" if runtime.virtual_clock else "wall",  # its capability
                    **runtime.summary_extra()})  # the runtime's name and measured fields


def _final_metrics(runtime: Runtime, status: str) -> tuple[dict[str, Any], float | None]:
    """Test metrics and the training loss at the final parameters; None when a failed run's
    model cannot evaluate them (a model that raised mid-run raises again here)."""
    try:
        samples = runtime.settings.train_loss_samples
        return runtime.workload.evaluate(), runtime.workload.train_loss(samples)
    except Exception:  # noqa: BLE001 - the summary of a failed run is still written
        if status == "completed":
            raise
        return {"test_accuracy": None, "test_mse": None, "test_loss": None}, None


def _choices() -> dict[str, Any]:
    """Hydra's config-group choices (e.g. ``code``), when run under Hydra."""
    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items()
            if not k.startswith(("hydra", "preset"))}


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        run_app(lambda: _job(cfg, out_dir, multirun), "agc-train")
    except (TrainingDiverged, WorkersLost, StartupLost, TrainingInterrupted,
            KeyboardInterrupt) as exc:
        # KeyboardInterrupt: a second Ctrl-C stopped the iteration at once (never inside an
        # update or a checkpoint write: the checkpoint holds the last completed iteration),
        # or a Ctrl-C after the loop
        what = (f"training diverged: {exc} (checkpoint saved in {out_dir})"
                if isinstance(exc, TrainingDiverged) else
                f"too few workers: {exc}" if isinstance(exc, WorkersLost) else
                f"start-up failed: {exc}; every rank has stopped (summary.json in {out_dir})"
                if isinstance(exc, StartupLost) else
                f"interrupted: {exc}" if isinstance(exc, TrainingInterrupted) else
                f"interrupted at once by a second Ctrl-C (checkpoint {out_dir / CHECKPOINT_NAME}"
                "); continue with trainer.resume=true and the same hydra.run.dir")
        print(f"agc-train: {what}", file=sys.stderr)
        if multirun and isinstance(exc, TrainingDiverged | WorkersLost | StartupLost):
            # a result of the sweep (summary.json: "diverged" or "workers_lost"); re-running
            # the sweep redoes a job that lost its workers
            return
        raise SystemExit(getattr(exc, "exit_status", TrainingInterrupted.exit_status)) from None
    except Exception as exc:  # e.g. the user's model raised mid-run, after the run started
        if not _failed_run(out_dir):
            raise
        trace = out_dir / "traceback.txt"
        trace.write_text(traceback.format_exc(), encoding="utf-8")
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"agc-train: training failed: {type(exc).__name__}: {first} (checkpoint and "
              f"summary.json in {out_dir}; the stack trace is in {trace})", file=sys.stderr)
        if not multirun:
            raise SystemExit(1) from None


def _failed_run(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds the summary of a run that failed (this one, once started)."""
    try:
        return RunSummary.read(out_dir / "summary.json").status == "failed"
    except ValueError:
        return False


def _job(cfg: DictConfig, out_dir: Path, multirun: bool) -> dict[str, Any] | None:
    if skip_finished_job(cfg, out_dir, ("metrics.jsonl",)):
        return None  # a re-run sweep: this job's complete run is already there
    limit_threads(cfg)
    with app_job(cfg, out_dir, "train") as job:
        summary = run_training(cfg, out_dir, replace=multirun)
        job.result = f"final train loss {summary['final_train_loss']:.4f} -> {out_dir}"
        return summary


def main() -> None:
    """Console-script entry point (``agc-train``). Under torchrun, ranks > 0 are the
    ranks of ``trainer=distributed`` or ``trainer=ddp``: they skip Hydra and take rank 0's
    configuration."""
    env = torchrun_env()
    if env is not None and env[0] > 0:
        from agc_pipeline.training.launch import run_from_env

        raise SystemExit(run_from_env())
    refuse_foreign_presets("train")
    _hydra_main()


if __name__ == "__main__":
    main()

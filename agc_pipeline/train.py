"""The ``train`` app: coded SGD on a simulated cluster (paper §6, Fig. 6) or on real
processes (``trainer=distributed``: a parameter server and n workers on torch.distributed).

    python -m agc_pipeline.train experiment=fig6_bibd7            # one run
    python -m agc_pipeline.train trainer=distributed              # PS + n worker processes
    torchrun --standalone --nproc_per_node=8 -m agc_pipeline.train trainer=distributed
    python -m agc_pipeline.train -m experiment=fig6_bibd7         # Fig. 6: schemes × seeds
    python -m agc_pipeline.train -m experiment=compare_codes      # baselines × q × seeds
    python -m agc_pipeline.train trainer.resume=true hydra.run.dir=<interrupted run dir>

Writes ``metrics.jsonl`` (one row per logged iteration), ``summary.json`` and
``checkpoint.pt`` in the Hydra run dir; with ``logger=wandb`` also a W&B run (offline by
default). Exit status: 2 for an impossible configuration, 3 when training diverges (NaN/Inf
gradient), 130 when interrupted (SIGINT/SIGTERM stop at the end of the iteration); a
checkpoint is saved in the last two cases. In a multirun a diverged job is reported and the
sweep goes on (its summary.json says ``"status": "diverged"``).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from agc_pipeline.build import (
    build_assignment,
    build_dataset,
    build_decoder,
    build_model,
    build_optimizer,
    build_scheduler,
    build_scheme,
    build_straggler,
    build_trainer_settings,
    run_app,
)
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.errors import require
from agc_pipeline.provenance import record
from agc_pipeline.sinks import JsonlSink, MultiSink, make_logger_sink, write_json
from agc_pipeline.sweeps import limit_threads, skip_finished_job
from agc_pipeline.training.checkpoint import (
    CHECKPOINT_NAME,
    config_differences,
    load_checkpoint,
    truncate_metrics,
)
from agc_pipeline.training.coded_step import TrainingDiverged
from agc_pipeline.training.distributed import DistributedSettings, torchrun_env
from agc_pipeline.training.ps import ParameterServer
from agc_pipeline.training.simulated import (
    SimulatedSettings,
    SimulatedTrainer,
    TrainingInterrupted,
)

log = logging.getLogger("agc_pipeline.train")

#: config keys that may change when a run is resumed (everything else must match)
RESUMABLE_CHANGES = ("trainer.iterations", "trainer.resume", "trainer.progress",
                     "trainer.log_every", "trainer.eval_every", "trainer.checkpoint_every",
                     "trainer.device", "logger", "trainer.timeout_s", "trainer.startup_timeout_s",
                     "trainer.start_method", "trainer.fault", "trainer.grad_error")


def build_trainer(cfg: DictConfig) -> SimulatedTrainer:
    """Every object of the run, built and validated before any training."""
    settings = build_trainer_settings(cfg)
    require(isinstance(settings, SimulatedSettings),
            "trainer must be simulated or distributed (a SimulatedSettings target)")
    m = cfg.m
    require(isinstance(m, int) and not isinstance(m, bool) and m >= 1,
            f"m must be a positive integer (got {m!r})")
    assignment = build_assignment(cfg)
    built_m = assignment.params.get("m")
    require(assignment.kind != "coset" or built_m == m,
            f"the coset graph was built for m = {built_m} but m = {m}; the coset graph "
            "(k, m, delta) has n = m·k workers (set assignment.m=${m})")
    scheme = build_scheme(cfg.scheme, assignment, m)
    decoder = build_decoder(cfg)
    straggler = build_straggler(cfg)
    dataset = build_dataset(cfg)
    model = build_model(cfg, dataset)
    make_optimizer = build_optimizer(cfg)
    make_scheduler = build_scheduler(cfg, settings.iterations)
    runtime = ParameterServer if isinstance(settings, DistributedSettings) else SimulatedTrainer
    return runtime(model, dataset, scheme, decoder, straggler, settings, int(cfg.seed),
                   make_optimizer=make_optimizer, make_scheduler=make_scheduler)


def run_training(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Train with ``cfg``; write metrics.jsonl, summary.json and checkpoint.pt in ``out_dir``.

    Returns the summary. Raises ConfigError (bad configuration, before training),
    TrainingDiverged or TrainingInterrupted (after saving a checkpoint).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    metrics, checkpoint = out_dir / "metrics.jsonl", out_dir / CHECKPOINT_NAME
    wandb_id = None
    resume = trainer.settings.resume
    if resume and not checkpoint.exists():
        require(not metrics.exists(), f"trainer.resume=true but {out_dir} holds metrics.jsonl "
                                      f"and no {CHECKPOINT_NAME}; cannot continue that run")
        log.warning("trainer.resume=true but there is no run in %s: starting a fresh one "
                    "(pass hydra.run.dir=<the interrupted run's dir> to continue one)", out_dir)
        resume = False
    if resume:
        state = load_checkpoint(checkpoint)
        changed = [key for key in config_differences(state["config"], config)
                   if not key.startswith(RESUMABLE_CHANGES)]
        require(not changed, f"trainer.resume=true: the configuration differs from the "
                             f"checkpoint's in {', '.join(changed)}")
        trainer.load_state_dict(state)
        wandb_id = state.get("wandb_id")
        kept = truncate_metrics(metrics, trainer.iteration)
        log.info("resuming at iteration %d (%d metrics rows kept)", trainer.iteration, kept)
    else:
        alpha = trainer.estimate_alpha()
        if alpha is not None:
            log.info("alpha = %.4f ± %.4f (residual %.3g, %d draws)%s", alpha.value,
                     alpha.stderr, alpha.residual, alpha.samples,
                     "; dividing the decoded gradient by it" if trainer.decoder.rescale else "")
    logger_sink = make_logger_sink(cfg.get("logger"), out_dir, config, group=str(cfg.name),
                                   job_type="train", name=_run_name(trainer, cfg),
                                   resume_id=wandb_id)
    sink = MultiSink([JsonlSink(metrics, append=resume), logger_sink])
    run = getattr(logger_sink, "run", None)
    extra = {"config": config, "wandb_id": getattr(run, "id", None)}
    status, error = "running", None
    try:
        trainer.fit(sink, checkpoint, extra)
        status = "completed"
    except BaseException as exc:
        status = ("diverged" if isinstance(exc, TrainingDiverged) else
                  "interrupted" if isinstance(exc, TrainingInterrupted | KeyboardInterrupt)
                  else "failed")
        error = str(exc) or type(exc).__name__
        raise
    finally:
        summary = _summary(trainer, cfg, config, status, error, time.perf_counter() - started)
        write_json(out_dir / "summary.json", summary)
        sink.summary({k: v for k, v in summary.items() if not isinstance(v, dict | list)})
        sink.close()
    test = summary["test_accuracy"]
    log.info("final train loss %.4f, test accuracy %s, %d iterations in %.1f s -> %s",
             summary["final_train_loss"], "n/a" if test is None else f"{test:.4f}",
             summary["iterations"], summary["seconds"], out_dir)
    return summary


def _run_name(trainer: SimulatedTrainer, cfg: DictConfig) -> str:
    return f"{trainer.scheme.name}-{trainer.scheme.assignment.name}-m{trainer.m}-seed{cfg.seed}"


def _summary(trainer: SimulatedTrainer, cfg: DictConfig, config: dict[str, Any], status: str,
             error: str | None, seconds: float) -> dict[str, Any]:
    """summary.json: results, code description and reproducibility information."""
    tot = trainer.totals
    done = max(tot.iterations, 1)
    final = trainer.evaluate()
    return {
        "name": str(cfg.name), "status": status, "error": error,
        "final_train_loss": trainer.train_loss(),
        "test_accuracy": final.get("test_accuracy"), "test_mse": final.get("test_mse"),
        "test_loss": final["test_loss"],
        # seconds: this invocation, end to end; train_seconds: training, all sessions
        "iterations": tot.iterations, "seconds": seconds, "train_seconds": tot.seconds,
        "virtual_time": trainer.clock.virtual_time,
        "total_bytes_to_ps": tot.bytes_to_ps, "mean_survivors": tot.survivors / done,
        "skipped_iterations": tot.skipped, "mean_grad_error": tot.grad_error / done,
        "alpha": None if trainer.alpha is None else trainer.alpha.as_dict(),
        "rescaled": trainer.decoder.rescale,
        "scheme": trainer.scheme.describe(), "assignment": trainer.scheme.assignment.summary(),
        "decoder": {"name": trainer.decoder.name, "rescale": trainer.decoder.rescale},
        "straggler": trainer.straggler.describe(), "m": trainer.m,
        "wait_for_all": trainer.settings.wait_for_all, "lr": trainer.settings.lr,
        "model": type(trainer.model).__name__, "parameters": trainer.d,
        "message_length": trainer.length, "dataset": trainer.dataset.name,
        "train_samples": trainer.num_samples, "seed": int(cfg.seed),
        **getattr(trainer, "summary_extra", dict)(),  # trainer=distributed: measured fields
        "choices": _choices(),
        **record(),  # versions (torch, numpy, hydra, wandb, ...) and provenance (git, host)
        "config": config,
    }


def _choices() -> dict[str, Any]:
    """Hydra's config-group choices (e.g. ``code``), when run under Hydra."""
    if not HydraConfig.initialized():
        return {}
    return {k: v for k, v in HydraConfig.get().runtime.choices.items()
            if not k.startswith("hydra")}


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if skip_finished_job(cfg, out_dir, ("metrics.jsonl",)):
        return  # a re-run sweep: this job's complete run is already there
    limit_threads()
    try:
        run_app(lambda: run_training(cfg, out_dir), "agc-train")
    except TrainingDiverged as exc:
        print(f"agc-train: training diverged: {exc} (checkpoint saved in {out_dir})",
              file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return  # a diverged job is a result of a sweep (summary.json: "diverged")
        raise SystemExit(3) from None
    except TrainingInterrupted as exc:
        print(f"agc-train: interrupted: {exc}", file=sys.stderr)
        raise SystemExit(130) from None


def main() -> None:
    """Console-script entry point (``agc-train``). Under torchrun, ranks > 0 are the
    workers of ``trainer=distributed``: they skip Hydra and take the PS's configuration."""
    env = torchrun_env()
    if env is not None and env[0] > 0:
        from agc_pipeline.training.worker import run_from_env

        raise SystemExit(run_from_env())
    _hydra_main()


if __name__ == "__main__":
    main()

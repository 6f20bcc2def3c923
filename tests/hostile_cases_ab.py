"""The hostile harness's cases of categories a (refused commands against a finished run: the
run dir must stay byte-identical) and b (wrong types and values: refused, never accepted)."""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path

from agc_pipeline.train import run_training
from tests.conftest import compose_config
from tests.hostile_lib import (
    DATA,
    RUN,
    Case,
    Outcome,
    Runner,
    analyze,
    in_process,
    plan,
    train,
)


def _rewrite(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).write_bytes(change((run / name).read_bytes()))
    return damage


def _garble_a_row(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # a row cut in the middle
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _drop_last_row(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _directory_checkpoint(run: Path) -> None:
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()


def locked(runner: Runner) -> Runner:
    """``runner`` while another run holds the run dir's lock."""
    def run(path: Path) -> Outcome:
        with (path / ".run.lock").open("a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return runner(path)
    return run


RESUME = "trainer.resume=true"


def ddp_resume(run: Path) -> Outcome:
    """Resume the simulated run with trainer=ddp (the keys RUN sets that ddp lacks left out)."""
    args = [*DATA, "trainer.iterations=3", "trainer.progress=false", "logger=none", RESUME,
            "trainer=ddp", "code=uncoded_wait"]
    return in_process(lambda: run_training(compose_config("train", args), run), "agc-train")
NOT_READ = "cannot read checkpoint"

A: dict[str, Case] = {
    "resume: garbled metrics row": Case("a", lambda f: train(RESUME), "restore the file",
                                        damage=_garble_a_row),
    "resume: truncated metrics.jsonl": Case(
        "a", lambda f: train(RESUME), "metrics.jsonl",
        damage=_rewrite("metrics.jsonl", lambda b: b[: len(b) // 2])),
    "resume: a metrics row missing": Case("a", lambda f: train(RESUME), "metrics.jsonl",
                                          damage=_drop_last_row),
    "resume: changed lr": Case("a", lambda f: train(RESUME, "trainer.lr=0.1"),
                               "differs from the checkpoint's in"),
    "resume: changed seed": Case("a", lambda f: train(RESUME, "seed=5"),
                                 "differs from the checkpoint's in dataset.seed"),
    "resume: changed data": Case("a", lambda f: train(RESUME, "dataset.dim=7"),
                                 "differs from the checkpoint's in dataset.dim"),
    "resume: changed m": Case("a", lambda f: train(RESUME, "m=1"),
                              "differs from the checkpoint's in"),
    "resume: changed code": Case("a", lambda f: train(RESUME, "code=frc"),
                                 "differs from the checkpoint's in"),
    "resume: shorter": Case("a", lambda f: train(RESUME, "trainer.iterations=2"),
                            "cannot be shortened"),
    "resume: runtime switch": Case("a", lambda f: ddp_resume, "differs from the checkpoint"),
    "resume: logger.tags=notalist": Case(
        "a", lambda f: train(RESUME, "logger=wandb", "logger.mode=disabled",
                             "logger.tags=notalist"), "logger.tags must be a list of strings"),
    "resume: random checkpoint": Case(
        "a", lambda f: train(RESUME), NOT_READ,
        damage=_rewrite("checkpoint.pt", lambda b: bytes(range(256)) * 40)),
    "resume: truncated checkpoint": Case(
        "a", lambda f: train(RESUME), NOT_READ,
        damage=_rewrite("checkpoint.pt", lambda b: b[: len(b) // 3])),
    "resume: empty checkpoint": Case("a", lambda f: train(RESUME), NOT_READ,
                                     damage=_rewrite("checkpoint.pt", lambda b: b"")),
    "resume: checkpoint is a directory": Case("a", lambda f: train(RESUME), "checkpoint.pt",
                                              damage=_directory_checkpoint),
    "resume: no checkpoint beside metrics": Case(
        "a", lambda f: train(RESUME), "holds metrics.jsonl and no checkpoint.pt",
        damage=_unlink("checkpoint.pt")),
    "fresh run into a finished run": Case("a", lambda f: train("trainer.lr=0.1"),
                                          "already holds a run"),
    "fresh run into a run with a garbled summary": Case(
        "a", lambda f: train(), "already holds a run",
        damage=_rewrite("summary.json", lambda b: b[:20])),
    "fresh run into a run with metrics only": Case(
        "a", lambda f: train(), "already holds a run",
        damage=lambda run: [(run / n).unlink() for n in ("summary.json", "checkpoint.pt")]),
    "fresh run while the dir is locked": Case(
        "a", lambda f: locked(train("trainer.overwrite=true")), "in use by another run"),
    "resume while the dir is locked": Case("a", lambda f: locked(train(RESUME)),
                                           "in use by another run"),
    "analyze into a finished analysis": Case("a", lambda f: analyze("seed=1", into="analysis"),
                                             "already holds an analysis"),
    "analyze into a finished analysis (same config)": Case(
        "a", lambda f: analyze(into="analysis"), "already holds an analysis"),
    "analyze over an analysis: logger.tags=notalist": Case(
        "a", lambda f: analyze("analysis.overwrite=true", "logger=wandb", "logger.mode=disabled",
                               "logger.tags=notalist", into="analysis"),
        "logger.tags must be a list of strings"),
    "analyze over an analysis: a bad bound": Case(
        "a", lambda f: analyze("analysis.overwrite=true", "analysis.plot_bounds=[nope]",
                               into="analysis"), "analysis.plot_bounds"),
}

EMPTY = "empty"


def _b(make: Callable[[dict[str, str]], Runner], says: str) -> Case:
    return Case("b", make, says, where=EMPTY)


B: dict[str, Case] = {
    "decoder.rescale=no": _b(lambda f: train("decoder.rescale=no"),
                             "decoder.rescale must be true or false"),
    "decoder.rescale=1": _b(lambda f: train("decoder.rescale=1"),
                            "decoder.rescale must be true or false"),
    "straggler.q=false": _b(lambda f: train("straggler.q=false"), "straggler.q"),
    "straggler.q=1.5": _b(lambda f: train("straggler.q=1.5"), "straggler.q"),
    "straggler.time_scale=inf": _b(lambda f: train("straggler=delay",
                                                   "straggler.time_scale=inf"),
                                   "straggler.time_scale"),
    "straggler.ranks out of range": _b(lambda f: train("straggler=persistent",
                                                       "straggler.ranks=[99]"),
                                       "straggler.ranks"),
    "straggler.ranks not a list": _b(lambda f: train("straggler=persistent",
                                                     "straggler.ranks=abc"),
                                     "straggler.ranks"),
    "dataset.download=maybe": _b(lambda f: train("dataset=mnist", "dataset.download=maybe",
                                                 "model=mlp", "dataset.train_size=100",
                                                 "dataset.test_size=10", data=False),
                                 "dataset.download must be true or false"),
    "logger.tags=notalist": _b(lambda f: train("logger=wandb", "logger.mode=disabled",
                                               "logger.tags=notalist"),
                               "logger.tags must be a list of strings"),
    "trainer.lr=-0.1": _b(lambda f: train("trainer.lr=-0.1"), "trainer.lr"),
    "trainer.lr=nan": _b(lambda f: train("trainer.lr=nan"), "trainer.lr"),
    "trainer.lr=true": _b(lambda f: train("trainer.lr=true"), "trainer.lr"),
    "optimizer.weight_decay=nan": _b(lambda f: train("optimizer.weight_decay=nan"),
                                     "optimizer.weight_decay must be a finite number"),
    "optimizer.momentum=inf": _b(lambda f: train("optimizer.momentum=inf"),
                                 "optimizer.momentum must be a finite number"),
    "m=0": _b(lambda f: train("m=0"), "m"),
    "m=-1": _b(lambda f: train("m=-1"), "m"),
    "m=2.5": _b(lambda f: train("m=2.5"), "m"),
    "m=10⁹": _b(lambda f: train("m=1000000000"), "m=1000000000 (n = 7, k = 7) needs about"),
    "assignment.n=0": _b(lambda f: train("assignment=cyclic", "assignment.n=0"),
                         "assignment"),
    "trainer.iterations=0": _b(lambda f: train("trainer.iterations=0"),
                               "trainer.iterations"),
    "trainer.iterations=2.5": _b(lambda f: train("trainer.iterations=2.5"),
                                 "trainer.iterations"),
    "trainer.resume=maybe": _b(lambda f: train("trainer.resume=maybe"), "trainer.resume"),
    "trainer.overwrite=yes": _b(lambda f: train("trainer.overwrite=yes"),
                                "trainer.overwrite"),
    "seed=abc": _b(lambda f: train("seed=abc"), "seed must be a non-negative integer"),
    "seed=-3 (analyze)": _b(lambda f: analyze("seed=-3"), "seed must be a non-negative integer"),
    "seed=1.5 (plan)": _b(lambda f: plan("seed=1.5"), "seed must be a non-negative integer"),
    "dataset.n_samples=0": _b(lambda f: train("dataset.n_samples=0"), "dataset.n_samples"),
    "unknown top-level key +experimnt (analyze)": _b(
        lambda f: analyze("+experimnt=fig3"), "experimnt (did you mean experiment?)"),
    "unknown top-level key +sed (train)": _b(lambda f: train("+sed=3"),
                                             "sed (did you mean seed?)"),
    "a key of another runtime": _b(lambda f: train("+trainer.min_workers=2"),
                                   "trainer.min_workers"),
    "label_skew on text": _b(lambda f: train("dataset=text", "dataset.partition=label_skew",
                                             "model=gpt", "dataset.train_size=50",
                                             "dataset.test_size=10", data=False),
                             "label_skew"),
    "a model for another task": _b(lambda f: train(*DATA[:-1], "model=linear", data=False),
                                   "model"),
    "an analyze preset for train": _b(lambda f: train("experiment=fig3", data=False),
                                      "fig3"),
    "analysis.plot_bounds=[bogus]": _b(lambda f: analyze("analysis.plot_bounds=[bogus]"),
                                       "analysis.plot_bounds: 'bogus' is not a bound of"),
    "analysis.overwrite=maybe": _b(lambda f: analyze("analysis.overwrite=maybe"),
                                   "analysis.overwrite"),
    "plan.n=[10⁹]": _b(lambda f: plan("plan.n=[1000000000]"), "plan.n=1000000000"),
    "plan.p=[1.5]": _b(lambda f: plan("plan.p=[1.5]"), "plan.p"),
    "plan.draws=0": _b(lambda f: plan("plan.draws=0"), "plan.draws"),
    "plan.plot=maybe": _b(lambda f: plan("plan.plot=maybe"), "plan.plot"),
    "plan.convergence with iterations=arena": _b(
        lambda f: plan(f"plan.convergence={f['tmp']}/nan.json"), "plan.convergence"),
    "plan.arena with iterations=curves": _b(
        lambda f: plan("plan.iterations=curves", f"plan.arena={f['file']}"), "plan.arena"),
    "plan.iterations=bogus": _b(lambda f: plan("plan.iterations=bogus"), "plan.iterations"),
}

#: the run arguments the cases of this module build on
__all__ = ["A", "B", "RUN"]

"""The hostile harness's cases of categories c (broken user models, foreign checkpoints, bad
files for plan, report and repro: no stack trace) and d (refusals whose message must name
the parameter or file), and the hostile files they point at."""

from __future__ import annotations

import errno
import gzip
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
import torch

import agc_pipeline.training.checkpoint as checkpoint_module
from tests.conftest import ROOT
from tests.hostile_lib import FAST, Case, Outcome, Runner, cli, plan, report, repro, train

RESUME = "trainer.resume=true"


def hostile_files(tmp: Path) -> dict[str, str]:
    """The hostile files the cases point at."""
    (tmp / "a_file").write_text("x")
    (tmp / "not_utf8.json").write_bytes(b"\xff\xfe\x00{")
    (tmp / "garbage.json").write_text("{\"arena\": [1, 2,")
    (tmp / "list.json").write_text("[]")
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (tmp / "empty_dir").mkdir()
    (tmp / "brokenmodule.py").write_text("import torch\nclass Net(torch.nn.Module:\n")
    curves = {"exact": "e", "curves": {"e": {"normalised_error": 0.0, "loss": [3.0, 2.0, 1.0]},
                                       "a": {"normalised_error": 0.2,
                                             "loss": [3.0, float("nan"), 1.0]}}}
    (tmp / "nan.json").write_text(json.dumps(curves))
    os.mkfifo(tmp / "fifo")
    for name in ("golden_garbage", "golden_none"):
        (tmp / name).mkdir()
    (tmp / "golden_garbage" / "fig3_small.json").write_text("not json at all")
    source = ROOT / "agc_pipeline" / "data" / "mnist_t10k"
    for copy in ("mnist", "mnist_shapes", "mnist_count", "mnist_missing"):
        (tmp / copy).mkdir()
        for split in ("train", "t10k"):
            for kind in ("images-idx3", "labels-idx1"):
                (tmp / copy / f"{split}-{kind}-ubyte.gz").write_bytes(
                    (source / f"t10k-{kind}-ubyte.gz").read_bytes())
    raw = (tmp / "mnist" / "train-labels-idx1-ubyte.gz").read_bytes()
    (tmp / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(raw[:10] + bytes(50) + raw[60:])
    images = struct.pack(">iiii", 0x803, 20, 14, 14) + bytes(20 * 14 * 14)  # 14 × 14 pixels
    (tmp / "mnist_shapes" / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    labels = struct.pack(">ii", 0x801, 20) + bytes(20)
    (tmp / "mnist_shapes" / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    # 20 training labels for 10,000 images
    (tmp / "mnist_count" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    (tmp / "mnist_missing" / "t10k-labels-idx1-ubyte.gz").unlink()
    return {"tmp": str(tmp), "file": str(tmp / "a_file")}


def disk_full_at_third_checkpoint(run: Path) -> Outcome:
    """A fresh run whose third checkpoint meets a full disk (the run dir is emptied first:
    what must survive is the second checkpoint and the rows before)."""
    for path in run.iterdir():
        if path.is_file():
            path.unlink()
    real, calls = checkpoint_module.torch.save, []

    def save(obj: object, fh: IO[bytes]) -> None:
        calls.append(1)
        if len(calls) >= 3:
            fh.write(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, fh)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpoint_module.torch, "save", save)
        outcome = train()(run)
    whole = checkpoint_module.load_checkpoint(run / "checkpoint.pt")["iteration"] == 1
    return Outcome(outcome.status, outcome.stderr + ("" if whole else "\nLOST checkpoint"))


def _foreign_checkpoint(run: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, run / "checkpoint.pt")


def _other_architecture(run: Path) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["model"] = {k: torch.zeros(2, 2) for k in state["model"]}
    torch.save(state, run / "checkpoint.pt")


def _no_model_state(run: Path) -> None:
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["model"]
    torch.save(state, run / "checkpoint.pt")


def _garble(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / name
        path.write_bytes(path.read_bytes()[:25])
    return damage


def user_model(name: str, module: str = "tests.test_user_models") -> Runner:
    return train("dataset=mnist", "dataset.train_size=100", "dataset.test_size=10",
                 "model=custom_example", "~model.module",
                 f"+model.module._target_={module}.{name}", data=False)


def mnist(folder: str) -> Callable[[dict[str, str]], Runner]:
    return lambda f: train("dataset=mnist", f"dataset.root={f['tmp']}/{folder}",
                           "dataset.download=false", "dataset.train_size=100",
                           "dataset.test_size=10", "model=mlp", data=False)


def text(path: str) -> Callable[[dict[str, str]], Runner]:
    return lambda f: train("dataset=text", f"dataset.path={f['tmp']}/{path}", "model=gpt",
                           data=False)


def _c(make: Callable[[dict[str, str]], Runner], says: str, **kw: object) -> Case:
    return Case("c", make, says, **kw)  # type: ignore[arg-type]


SWEEP = "sweep"  # a folder holding the finished run in train/ and the analysis in analysis/
WARN = {"expect": "warn", "one_line": False, "where": SWEEP}

C: dict[str, Case] = {
    "model without parameters": _c(lambda f: user_model("NoParams"),
                                   "model NoParams has no trainable parameters"),
    "model whose forward raises KeyError": _c(lambda f: user_model("RaisesKeyError"),
                                              "KeyError: 'boom'"),
    "model whose forward raises AssertionError": _c(lambda f: user_model("RaisesAssertion"),
                                                    "AssertionError: nope"),
    "model with a tuple output": _c(lambda f: user_model("TupleOutput"),
                                    "forward must return a tensor with one row per sample"),
    "model with a float output": _c(lambda f: user_model("FloatOutput"),
                                    "forward must return a tensor with one row per sample"),
    "model with a detached loss": _c(lambda f: user_model("DetachedOutput"),
                                     "the loss does not depend on the parameters"),
    "model class that does not exist": _c(lambda f: user_model("NoSuchNet"), "NoSuchNet"),
    "model that is a function": _c(lambda f: user_model("user_model"), "user_model"),
    "foreign torch.save checkpoint": _c(lambda f: train(RESUME), "unknown format",
                                        damage=_foreign_checkpoint),
    "checkpoint of another architecture": _c(lambda f: train(RESUME), "does not fit this run",
                                             damage=_other_architecture),
    "checkpoint without model state": _c(lambda f: train(RESUME), "checkpoint",
                                         damage=_no_model_state),
    "disk full at a checkpoint": _c(lambda f: disk_full_at_third_checkpoint,
                                    "checkpoint.pt: No space left on device", changes=True),
    "convergence not UTF-8": _c(
        lambda f: plan("plan.iterations=curves", f"plan.convergence={f['tmp']}/not_utf8.json"),
        "not_utf8.json: not a convergence-curves file (not UTF-8 text)"),
    "convergence with NaN": _c(
        lambda f: plan("plan.iterations=curves", f"plan.convergence={f['tmp']}/nan.json"),
        "nan.json: curve 'a' holds a NaN"),
    "convergence is garbage JSON": _c(
        lambda f: plan("plan.iterations=curves", f"plan.convergence={f['tmp']}/garbage.json"),
        "garbage.json"),
    "plan.arena garbage JSON": _c(lambda f: plan(f"plan.arena={f['tmp']}/garbage.json"),
                                  "garbage.json"),
    "plan.arena not UTF-8": _c(lambda f: plan(f"plan.arena={f['tmp']}/not_utf8.json"),
                               "not_utf8.json"),
    "plan.arena a JSON list": _c(lambda f: plan(f"plan.arena={f['tmp']}/list.json"),
                                 "list.json"),
    "plan.arena a directory": _c(lambda f: plan(f"plan.arena={f['tmp']}/empty_dir"),
                                 "plan.arena: not a file"),
    "plan.arena_regime=bogus": _c(lambda f: plan("plan.arena_regime=bogus"), "bogus"),
    "report: garbled summary.json beside an analysis": _c(
        lambda f: report(), "summary.json", damage=_garble("train/summary.json"), **WARN),
    "report --strict: garbled summary.json": _c(
        lambda f: report("--strict"), "summary.json", damage=_garble("train/summary.json"),
        where=SWEEP),
    "report: garbled summary.json alone": _c(lambda f: report(target="train"), "summary.json",
                                             damage=_garble("train/summary.json"), where=SWEEP),
    "report: garbled metrics.jsonl": _c(lambda f: report(), "metrics.jsonl",
                                        damage=_garble("train/metrics.jsonl"), **WARN),
    "report: garbled results.json beside a run": _c(
        lambda f: report(), "results.json", damage=_garble("analysis/results.json"), **WARN),
    "report: garbled results.json alone": _c(
        lambda f: report(target="analysis"), "results.json",
        damage=_garble("analysis/results.json"), where=SWEEP),
    "report --strict: garbled results.json": _c(
        lambda f: report("--strict"), "results.json", damage=_garble("analysis/results.json"),
        where=SWEEP),
    "report: empty results.json": _c(
        lambda f: report(), "results.json",
        damage=lambda run: (run / "analysis" / "results.json").write_text(""), **WARN),
    "report: a summary.json that is a list": _c(
        lambda f: report(), "summary.json",
        damage=lambda run: (run / "train" / "summary.json").write_text("[1, 2]"), **WARN),
    "report: a folder that does not exist": _c(lambda f: report(target="nowhere"), "nowhere"),
    "repro: golden that is not JSON": _c(
        lambda f: repro("--only", "fig3_small", "--golden-dir", f"{f['tmp']}/golden_garbage"),
        "fig3_small.json", one_line=False),
    "repro: --keep is a file": _c(lambda f: repro("--only", "fig3_small", "--keep", f["file"]),
                                  "--keep"),
    "repro: unknown check": _c(lambda f: repro("--only", "fig33"), "fig33"),
}

def _d(make: Callable[[dict[str, str]], Runner], says: str, **kw: object) -> Case:
    return Case("d", make, says, where="empty", **kw)  # type: ignore[arg-type]


D: dict[str, Case] = {
    "damaged gzip MNIST": Case("d", mnist("mnist"),
                               "train-labels-idx1-ubyte.gz: cannot read IDX file"),
    "MNIST train/test shapes differ": _d(mnist("mnist_shapes"), "(1, 14, 14)"),
    "MNIST labels fewer than images": _d(mnist("mnist_count"),
                                           "train-labels-idx1-ubyte"),
    "MNIST file missing, no download": _d(mnist("mnist_missing"),
                                            "t10k-labels-idx1-ubyte"),
    "dataset.root is a file": _d(lambda f: train(
        "dataset=mnist", f"dataset.root={f['file']}", "dataset.download=false",
        "model=mlp", data=False), "a_file is not a folder"),
    "FIFO as dataset.path": _d(text("fifo"), "fifo: not a regular file or a folder"),
    "empty text file": _d(text("empty.txt"), "empty.txt"),
    "binary text file": _d(text("binary.txt"), "binary.txt"),
    "text folder without text": _d(text("empty_dir"), "empty_dir"),
    "model module that does not import": _d(lambda f: user_model("Net", "brokenmodule"),
                                               "brokenmodule"),
    "plan.arena missing file": _d(lambda f: plan(f"plan.arena={f['tmp']}/nothere.json"),
                                    "nothere.json"),
    "garbage golden file": _d(
        lambda f: repro("--only", "fig3_small", "--golden-dir",
                             f"{f['tmp']}/golden_garbage"),
        "golden_garbage/fig3_small.json", one_line=False),
    "no golden file": _d(
        lambda f: repro("--only", "fig3_small", "--golden-dir", f"{f['tmp']}/golden_none"),
        "no golden file", one_line=False),
}

#: Hydra's own refusals and the run-dir callback: these need the command line (slow)
SLOW: dict[str, Case] = {
    "hydra.run.dir is a file": _c(
        lambda f: (lambda run: cli("train", *FAST, f"hydra.run.dir={f['file']}")),
        "a_file exists and is not a directory"),
    "hydra.run.dir under a file": _c(
        lambda f: (lambda run: cli("train", *FAST, f"hydra.run.dir={f['file']}/run")),
        "a_file is not a directory"),
    "unknown top-level key experimnt=fig3": Case(
        "b", lambda f: (lambda run: cli("analyze", "experimnt=fig3",
                                        f"hydra.run.dir={run}/new")), "experimnt",
        one_line=False),
    "misspelt option code=frcc": Case(
        "b", lambda f: (lambda run: cli("train", *FAST, "code=frcc",
                                        f"hydra.run.dir={run}/new")), "frcc", one_line=False),
    "swapped groups model=mnist": Case(
        "b", lambda f: (lambda run: cli("train", *FAST, "model=mnist",
                                        f"hydra.run.dir={run}/new")), "mnist", one_line=False),
    "swapped groups dataset=cnn": Case(
        "b", lambda f: (lambda run: cli("train", *FAST, "dataset=cnn",
                                        f"hydra.run.dir={run}/new")), "cnn", one_line=False),
    "an analyze preset for train (CLI)": Case(
        "b", lambda f: (lambda run: cli("train", "experiment=fig3", f"hydra.run.dir={run}/new")),
        "fig3"),
}

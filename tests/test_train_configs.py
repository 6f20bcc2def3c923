"""Every option file of the train app's groups composes and instantiates."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from agc_pipeline.build import (
    build_dataset,
    build_model,
    build_straggler,
    build_trainer_settings,
    preset_app,
    runtime_class,
)
from agc_pipeline.coding.stragglers import StragglerModel
from agc_pipeline.conf_path import CONFIG_DIR
from agc_pipeline.data import Dataset
from agc_pipeline.errors import ConfigError
from agc_pipeline.models import CodedModel
from agc_pipeline.train import build_trainer
from agc_pipeline.training.settings import TrainerSettings
from tests.conftest import compose_config
from tests.data_fixtures import fake_cifar10, fake_mnist

SMALL = ["dataset.n_samples=140", "trainer.alpha_samples=0", "trainer.progress=false"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


#: data sets read from files under dataset.root: a small fixture in the real format
FILE_DATASETS = {"fashion_mnist": fake_mnist, "cifar10": fake_cifar10}


@pytest.mark.parametrize("option", options("dataset"))
def test_dataset_options(option: str, tmp_path: Path) -> None:
    overrides = ["dataset.train_size=50", "dataset.test_size=10"] if option == "mnist" else []
    if option in FILE_DATASETS:
        overrides.append(f"dataset.root={FILE_DATASETS[option](tmp_path)}")
    data = build_dataset(compose_config("train", [f"dataset={option}", *overrides]))
    assert isinstance(data, Dataset) and len(data.y_train) > 0


#: a data set each model can train on
MODEL_DATA = {"linear": "synthetic_linear", "logistic": "synthetic_logistic",
              "mlp": "synthetic_logistic", "paper_mlp": "synthetic_logistic", "cnn": "mnist",
              "gpt": "text", "custom_example": "mnist", "custom": "synthetic_logistic"}
#: the user's module of model=custom (a plain nn.Module, wrapped by WithLoss)
CUSTOM = ["model.module._target_=torch.nn.Linear", "+model.module.in_features=20",
          "+model.module.out_features=2"]


@pytest.mark.parametrize("option", options("model"))
def test_model_options(option: str) -> None:
    assert option in MODEL_DATA, f"add {option} to MODEL_DATA"
    cfg = compose_config("train", [f"model={option}", f"dataset={MODEL_DATA[option]}",
                                   *(CUSTOM if option == "custom" else [])])
    data = build_dataset(cfg)
    model = build_model(cfg, data)
    assert isinstance(model, CodedModel) and model.task == data.task
    model(data.x_train[:3])


@pytest.mark.parametrize("option", options("straggler"))
def test_straggler_options(option: str) -> None:
    straggler = build_straggler(compose_config("train", [f"straggler={option}"]))
    assert isinstance(straggler, StragglerModel) and straggler.name == option


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(option: str) -> None:
    """Every trainer option names a runtime class with the protocol's methods and its
    settings class (adding a runtime = one module + one YAML); the settings' dataclass
    defaults equal the YAML defaults (each written once: conf/trainer/common/)."""
    cfg = compose_config("train", [f"trainer={option}"])
    settings = build_trainer_settings(cfg)
    runtime = runtime_class(cfg)
    assert isinstance(settings, runtime.settings_class)
    assert isinstance(settings, TrainerSettings)
    assert all(callable(getattr(runtime, name, None))
               for name in ("session", "step", "state_dict", "load_state_dict", "summary_extra"))
    assert runtime.name == option
    assert runtime.settings_class() == settings
    assert runtime.processes == (runtime.rank_main is not None)


@pytest.mark.parametrize("option", options("code"))
def test_code_options_build_a_trainer(option: str) -> None:
    cfg = compose_config("train", [f"code={option}", "dataset=synthetic_logistic",
                                   "model=logistic", *SMALL])
    trainer = build_trainer(cfg)
    assert trainer.spec.scheme.assignment.n >= 7


def test_compare_codes_uses_twelve_workers() -> None:
    for option in options("code"):
        if option in ("random_diagonal", "stack"):
            continue  # these keep the experiment's assignment
        cfg = compose_config("train", ["experiment=compare_codes", f"code={option}",
                                       "dataset.train_size=120", "dataset.test_size=10",
                                       "trainer.alpha_samples=0"])
        assert build_trainer(cfg).spec.scheme.n == 12, option


@pytest.mark.parametrize("preset", ["fig6_bibd7", "fig6_coset27"])
def test_fig6_presets(preset: str) -> None:
    cfg = compose_config("train", [f"experiment={preset}", "trainer.alpha_samples=0"])
    trainer = build_trainer(cfg)
    assert trainer.spec.m == 2 and cfg.trainer.iterations == 300 and cfg.straggler.q == 0.25
    assert trainer.spec.scheme.name == "random_diagonal"
    expected = (7, 7) if preset == "fig6_bibd7" else (54, 27)
    assert (trainer.spec.scheme.n, trainer.spec.scheme.k) == expected
    if preset == "fig6_coset27":
        assert trainer.spec.scheme.epsilon == 0.1
    stack = build_trainer(compose_config("train", [f"experiment={preset}", "code=stack",
                                                   "trainer.alpha_samples=0"]))
    assert stack.spec.scheme.name == "stack" and stack.spec.scheme.n == trainer.spec.scheme.n


# ------------------------------------------------------------------------------------------
# every train preset with every option of the groups it sets: swapping a group after a
# preset works (the preset's values for an option apply only to that option)

#: the arena presets are compositions of mitigation= x regime= (each mitigation and regime
#: checked in tests/test_arena.py); swapping one group after them is not what they are for
ARENA_PRESETS = ("arena", "arena_gpt")
TRAIN_PRESETS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")
                       if preset_app(p.stem) == "train" and p.stem not in ARENA_PRESETS)
GROUPS = ("assignment", "scheme", "code", "decoder", "dataset", "model", "straggler", "trainer",
          "optimizer", "scheduler", "debug")
SHRINK = {"mnist": ["dataset.train_size=300", "dataset.test_size=20"],
          "synthetic_linear": ["dataset.n_samples=150"],
          "synthetic_logistic": ["dataset.n_samples=150"],
          "text": ["dataset.train_size=300", "dataset.test_size=10"],
          "fashion_mnist": [], "cifar10": []}
#: each preset's own data set (the one a swap of another group keeps)
PRESET_DATA = {"text_gpt": "text", "cifar10_resnet": "cifar10"}
#: the genuinely impossible combinations (and what they say): an exact scheme on an
#: assignment or an m it cannot use, (19) without n = m·k, a regression model or data set
#: against the other's classification task
NEEDS_FRACTIONAL = "ce_frc needs assignment=fractional"
NEEDS_M1 = "needs m = 1"
NEEDS_MK = "needs n = m·k workers"
TASKS = {("dataset", "synthetic_linear"): "is a regression data set",
         ("model", "linear"): "is a regression model",
         ("dataset", "fashion_mnist"): "dataset.root must be set",
         ("dataset", "cifar10"): "dataset.root must be set",
         ("dataset", "text"): "takes features or image inputs", ("model", "gpt"): "takes tokens"}
#: a token-sequence preset (model=gpt): every image or feature model or data set is wrong
ON_TEXT = {("dataset", "synthetic_linear"): "is a regression data set",
           ("model", "linear"): "is a regression model",
           ("dataset", "fashion_mnist"): "dataset.root must be set",
           ("dataset", "cifar10"): "dataset.root must be set",
           **{("dataset", d): "takes tokens" for d in ("mnist", "synthetic_logistic")},
           **{("model", m): "takes features or image inputs"
              for m in ("mlp", "paper_mlp", "logistic")},
           ("model", "cnn"): "CNN takes image inputs",
           ("model", "custom_example"): "cannot train on dataset text"}
EXACT_ON_M2 = {("scheme", "crc"): NEEDS_M1, ("scheme", "frc"): NEEDS_M1}
FIG6_CODES = {("code", "ce_frc"): NEEDS_FRACTIONAL, ("code", "crc"): "crc needs assignment=cyclic",
              ("code", "frc"): "frc needs assignment=fractional",
              ("scheme", "ce_frc"): NEEDS_FRACTIONAL}
IMPOSSIBLE = {
    "fig6_bibd7": {**TASKS, **EXACT_ON_M2, **FIG6_CODES, ("scheme", "hadamard_nullspace"): NEEDS_MK,
                   ("code", "biregular_hadamard"): NEEDS_MK},
    "fig6_coset27": {**TASKS, **EXACT_ON_M2, **FIG6_CODES},
    "compare_codes": {**TASKS, **EXACT_ON_M2, ("scheme", "ce_frc"): NEEDS_FRACTIONAL,
                      ("scheme", "hadamard_nullspace"): NEEDS_MK},
    "communication": {**TASKS, **EXACT_ON_M2, ("scheme", "hadamard_nullspace"): NEEDS_MK},
}
IMPOSSIBLE["compare_codes_mnist"] = IMPOSSIBLE["compare_codes"]
#: an image preset (model=cnn): feature and token data sets are the wrong kind
ON_IMAGES = {("dataset", "synthetic_logistic"): "CNN takes image inputs",
             ("dataset", "text"): "CNN takes image inputs"}
#: the model presets leave assignment and decoder to code=, so every code builds
CODE_ONLY = {key for key in IMPOSSIBLE["fig6_bibd7"] if key[0] == "code"}
IMPOSSIBLE["mnist_cnn"] = {**{key: why for key, why in IMPOSSIBLE["fig6_bibd7"].items()
                              if key not in CODE_ONLY}, **ON_IMAGES}
IMPOSSIBLE["cifar10_resnet"] = {**IMPOSSIBLE["mnist_cnn"],
                                ("model", "custom_example"): "cannot train on dataset cifar10"}
del IMPOSSIBLE["cifar10_resnet"][("dataset", "cifar10")]  # the preset passes dataset.root
IMPOSSIBLE["text_gpt"] = {**{key: why for key, why in IMPOSSIBLE["fig6_bibd7"].items()
                             if key not in TASKS and key not in CODE_ONLY}, **ON_TEXT}
#: every preset trains a coded scheme: trainer=ddp (uncoded data parallelism) refuses it, by
#: the rule "trainer=ddp is plain data-parallel SGD", or for the coded runtimes' keys a preset
#: sets ("trainer.alpha_samples does not apply to trainer=ddp")
for _table in IMPOSSIBLE.values():
    _table[("trainer", "ddp")] = "trainer=ddp"
    _table[("trainer", "local_sgd")] = "trainer=local_sgd"  # uncoded too, as DDP
    _table[("trainer", "local_sgd_simulated")] = "trainer=local_sgd_simulated"
    # model=custom names no module until the user does (model.module._target_=...)
    _table[("model", "custom")] = "model.module._target_ is not set"


#: trainer options without a code: no trainer.alpha_samples key
UNCODED = {("trainer", "ddp"), ("trainer", "local_sgd"), ("trainer", "local_sgd_simulated")}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_cifar10(tmp_path_factory.mktemp("cifar"), per_batch=100, n_test=50)


def test_train_presets_are_listed() -> None:
    assert set(TRAIN_PRESETS) == set(IMPOSSIBLE)


#: presets whose group-swap matrix repeats another's (compare_codes_mnist = compare_codes;
#: communication and fig6_coset27 ~ fig6_bibd7): run with -m slow (in .ci/run), keeping the
#: default suite near 10 minutes
SLOW_PRESETS = ("compare_codes_mnist", "communication", "fig6_coset27")


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow)
                                    if p in SLOW_PRESETS else p for p in TRAIN_PRESETS])
def test_every_option_of_every_group_after_a_preset(preset: str, cifar_root: Path) -> None:
    unexpected = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for group in GROUPS:
            for option in options(group):
                dataset = option if group == "dataset" else PRESET_DATA.get(preset, "mnist")
                no_alpha = [] if (group, option) in UNCODED else [
                    "trainer.alpha_samples=0"]  # the coded runtimes' key
                overrides = [f"experiment={preset}", f"{group}={option}", *no_alpha,
                             *SHRINK[dataset]]
                if preset == "cifar10_resnet" and dataset == "cifar10":
                    overrides.append(f"dataset.root={cifar_root}")
                expected = IMPOSSIBLE[preset].get((group, option))
                try:
                    build_trainer(compose("train", overrides))
                except ConfigError as exc:
                    message = str(exc)
                    if expected is None or expected not in message or "\n" in message:
                        unexpected.append(f"{group}={option}: {message}")
                    continue
                except Exception as exc:  # noqa: BLE001 - collected, reported below
                    unexpected.append(f"{group}={option}: {type(exc).__name__}: {exc}")
                    continue
                if expected is not None:
                    unexpected.append(f"{group}={option} builds (expected {expected!r})")
    assert not unexpected, "\n".join(unexpected)


def test_a_swap_drops_only_the_values_of_the_swapped_option() -> None:
    cfg = compose_config("train", ["experiment=fig6_bibd7", "straggler=none"])
    assert "q" not in cfg.straggler and cfg.assignment.design == "fano"
    assert cfg.dataset.train_size == 4000
    cfg = compose_config("train", ["experiment=fig6_coset27", "scheme=stack"])
    assert "epsilon" not in cfg.scheme and cfg.assignment.k == 27
    assert cfg.straggler.q == 0.25
    cfg = compose_config("train", ["experiment=fig6_coset27", "scheme=random_diagonal",
                                   "scheme.epsilon=0.2"])
    assert cfg.scheme.epsilon == 0.2  # a command-line value still wins


@pytest.mark.parametrize("preset", ["mnist_cnn", "text_gpt", "cifar10_resnet"])
def test_model_presets_sweep_real_baselines(preset: str) -> None:
    """The sweep's code= values change the code, not only its name: uncoded ignore-stragglers
    is A = I on the same n = 7 workers with fixed decoding and m = 1; (7) and stack keep the
    Fano plane (the preset must not pin the assignment or decoder over the code's)."""
    built = {code: compose_config("train", [f"experiment={preset}", f"code={code}"])
             for code in ("random_diagonal", "stack", "uncoded_ignore")}
    ignore = built["uncoded_ignore"]
    assert ignore.assignment._target_.endswith("identity") and ignore.assignment.n == 7
    assert ignore.decoder._target_.endswith("FixedDecoder") and ignore.m == 1
    for code in ("random_diagonal", "stack"):
        assert built[code].assignment.design == "fano" and built[code].m == 2
        assert built[code].decoder._target_.endswith("OptimalDecoder")

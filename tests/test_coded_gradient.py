"""The one-pass coded gradient (training/coded_gradient.py) against the k partial gradients.

Section III: block u of Σ_i C[u, i, v] g_i must be what the engine returns, for any
coefficients, any m (block boundaries inside layers), Linear/Conv/GroupNorm/LayerNorm/
Embedding/attention modules, and the plain gradient on the side.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from agc_pipeline.errors import ConfigError
from agc_pipeline.training.coded_gradient import CodedGradient


class _Model(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1),
                               reduction="sum")


class _AddPosition(nn.Module):
    def __init__(self, t: int, c: int) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(t, c) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos[: x.shape[1]]


class _Attention(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = nn.LayerNorm(c), nn.Linear(c, 3 * c), nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], is_causal=True)
        return x + self.proj(a[:, 0])


def _mlp() -> tuple[nn.Module, callable]:
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 5))
    return _Model(net), lambda n, g: (torch.randn(n, 1, 6, 6, generator=g),
                                      torch.randint(0, 5, (n,), generator=g))


def _cnn() -> tuple[nn.Module, callable]:
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 5))
    return _Model(net), lambda n, g: (torch.randn(n, 1, 8, 8, generator=g),
                                      torch.randint(0, 5, (n,), generator=g))


def _transformer() -> tuple[nn.Module, callable]:
    net = nn.Sequential(nn.Embedding(11, 8), _AddPosition(6, 8), _Attention(8),
                        nn.LayerNorm(8), nn.Linear(8, 11))
    return _Model(net), lambda n, g: (torch.randint(0, 11, (n, 6), generator=g),
                                      torch.randint(0, 11, (n, 6), generator=g))


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, subset: torch.Tensor,
               k: int, m: int, coef: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_u Σ_i C[u, i, v] g_i[u] from k separate autograd gradients, in float64."""
    rows = []
    for i in range(k):
        model.zero_grad()
        model.loss_sum(model(x[subset == i]), y[subset == i]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    g = torch.stack(rows)
    d = g.shape[1]
    length = -(-d // m)
    z = torch.zeros(k, m * length, dtype=torch.float64)
    z[:, :d] = g
    out = torch.einsum("kul,ukv->vl", z.view(k, m, length), torch.as_tensor(coef))
    return out, g.sum(0)


@pytest.mark.parametrize("build", [_mlp, _cnn, _transformer], ids=["mlp", "cnn", "transformer"])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_weighted_equals_the_partial_gradient_combination(build: callable, m: int) -> None:
    torch.manual_seed(0)
    model, data = build()
    gen = torch.Generator().manual_seed(1)
    k, b = 5, 3
    x, y = data(k * b, gen)
    subset = torch.arange(k).repeat_interleave(b)
    engine = CodedGradient(model, m)
    coef = np.random.default_rng(2).normal(size=(m, k, 2))
    ref, plain = _reference(model, x, y, subset, k, m, coef)
    res = engine(x, y, subset, coef, plain_weight=1.0)
    assert res.blocks.shape == (2, engine.length)
    rel = float((res.blocks.double() - ref).norm() / ref.norm())
    assert rel < 1e-5
    assert float((res.plain.double() - plain).norm() / plain.norm()) < 1e-5
    assert res.loss == pytest.approx(float(model.loss_sum(model(x), y).detach()), rel=1e-5)
    engine.check(x, y)  # the contract holds


def test_block_boundary_inside_a_weight_matrix() -> None:
    """d = 36·16 + 16 + 16·5 + 5 = 677; with m = 2 the boundary (339) cuts the first
    weight matrix mid-row: both halves must land in their own block."""
    model, data = _mlp()
    engine = CodedGradient(model, 2)
    first = engine._params[id(model.net[1].weight)]
    assert [s.block for s in first.segments] == [0, 1]
    x, y = data(4, torch.Generator().manual_seed(0))
    subset = torch.tensor([0, 0, 1, 1])
    coef = np.zeros((2, 2, 1))
    coef[1, :, 0] = 1.0  # only block 1 of each gradient, summed: the second half of g
    res = engine(x, y, subset, coef, plain_weight=1.0)
    half = res.plain[engine.length:]
    assert torch.allclose(res.blocks[0, :half.numel()], half, rtol=1e-5, atol=1e-7)


def test_batchnorm_is_refused_with_one_line() -> None:
    model = _Model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()))
    with pytest.raises(ConfigError, match="BatchNorm2d mixes the samples.*per_subset"):
        CodedGradient(model, 2)


def test_a_tied_weight_read_by_another_module_is_detected() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(7, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.emb(x) @ self.emb.weight.T  # the head reads emb.weight outside emb

        def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs.reshape(-1, 7), targets.reshape(-1), reduction="sum")

    engine = CodedGradient(Tied(), 1)
    x = torch.randint(0, 7, (3, 5))
    with pytest.raises(ConfigError, match="'emb.weight' is not formed inside the module"):
        engine.check(x, x)


def test_a_module_whose_output_is_not_batch_first_is_refused() -> None:
    class Position(nn.Module):  # returns (T, C): dim 0 is not the sample
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(5, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pos[: x.shape[1]]

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.pos, self.head = nn.Embedding(7, 4), Position(), nn.Linear(4, 7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.emb(x) + self.pos(x))

        def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs.reshape(-1, 7), targets.reshape(-1), reduction="sum")

    engine = CodedGradient(Model(), 2)
    x = torch.randint(0, 7, (3, 5))
    with pytest.raises(ConfigError, match="Position returned shape \\(5, 4\\) for a batch of 3"):
        engine(x, x, torch.zeros(3, dtype=torch.long), np.ones((2, 1, 1)))


# ------------------------------------------------------------------------------------------
# the paths of the weight-gradient kernels (training/weight_gradients.py)


#: per-subset tiles (TILE_ELEMENTS, TILE_ROWS) at fan-in 8 and 4 subsets: 1 subset × 1 row,
#: 2 subsets × 2 rows, and all subsets with all rows
TILES = {"per_subset_1x1": (8, 1), "per_subset_2x2": (40, 2), "per_subset_all": (10**6, 2)}


@pytest.mark.parametrize("path", [*TILES, "per_sample"])
@pytest.mark.parametrize("layout", ["grouped", "unequal_unsorted"])
def test_linear_paths_tiles_and_subset_layouts(monkeypatch: pytest.MonkeyPatch, path: str,
                                               layout: str) -> None:
    """Both nn.Linear paths; per subset with tiles of 1–2 subsets × 1–2 rows (tile edges
    inside block segments, m = 3, one scratch buffer reused by every tile) and with one tile;
    subsets unequal in size and out of order."""
    from agc_pipeline.training import weight_gradients as wg

    monkeypatch.setattr(wg, "PER_SUBSET_MIN_ROWS", 10**9 if path == "per_sample" else 0)
    elements, rows = TILES.get(path, (wg.TILE_ELEMENTS, wg.TILE_ROWS))
    monkeypatch.setattr(wg, "TILE_ELEMENTS", elements)
    monkeypatch.setattr(wg, "TILE_ROWS", rows)
    torch.manual_seed(0)
    model, data = _transformer()
    gen = torch.Generator().manual_seed(3)
    k, m = 4, 3
    if layout == "grouped":
        subset = torch.arange(k).repeat_interleave(3)
    else:
        subset = torch.tensor([2, 0, 3, 0, 1, 0, 2, 3, 0, 1, 1, 0])  # counts 5, 3, 2, 2
    x, y = data(subset.numel(), gen)
    coef = np.random.default_rng(4).normal(size=(m, k, 2))
    ref, plain = _reference(model, x, y, subset, k, m, coef)
    res = CodedGradient(model, m)(x, y, subset, coef, plain_weight=1.0)
    assert float((res.blocks.double() - ref).norm() / ref.norm()) < 1e-5
    assert float((res.plain.double() - plain).norm() / plain.norm()) < 1e-5


def test_groups_gather_pads_short_subsets_with_zeros() -> None:
    from agc_pipeline.training.weight_gradients import Groups

    subset = torch.tensor([1, 0, 1, 3, 1])
    groups = Groups(subset)
    assert groups.ids.tolist() == [0, 1, 3] and groups.size == 3
    t = torch.arange(5.0)[:, None] + 1
    got = groups.gather(t)[..., 0]
    assert got.tolist() == [[2, 0, 0], [1, 3, 5], [4, 0, 0]]
    even = Groups(torch.tensor([0, 0, 2, 2]))
    assert even.gather(t[:4]).data_ptr() == t.data_ptr()  # contiguous groups: a view


def test_in_place_edits_of_module_outputs_switch_to_copying_taps() -> None:
    """A model writing into a module's output (ReLU(inplace=True) after a Linear) cannot
    be tapped as is; the engine switches to copying taps and returns the exact combination."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(inplace=True),
                        nn.Linear(16, 5))
    model = _Model(net)
    x, y = _mlp()[1](8, torch.Generator().manual_seed(0))
    subset = torch.arange(4).repeat_interleave(2)
    coef = np.random.default_rng(0).normal(size=(2, 4, 2))
    ref, plain = _reference(model, x, y, subset, 4, 2, coef)
    engine = CodedGradient(model, 2)
    res = engine(x, y, subset, coef, plain_weight=1.0)
    assert engine.copy_outputs
    assert float((res.blocks.double() - ref).norm() / ref.norm()) < 1e-5
    assert float((res.plain.double() - plain).norm() / plain.norm()) < 1e-5


def test_a_module_called_twice_and_an_embedding_padding_row() -> None:
    """Two calls of one Linear add up; the padding row of an Embedding gets no gradient."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(9, 6, padding_idx=0)
            self.mix = nn.Linear(6, 6)
            self.head = nn.Linear(6, 9)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.mix(torch.tanh(self.mix(self.emb(x)))))

        def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs.reshape(-1, 9), targets.reshape(-1), reduction="sum")

    torch.manual_seed(0)
    model = Twice()
    gen = torch.Generator().manual_seed(5)
    x = torch.randint(0, 9, (6, 5), generator=gen)
    x[0, :2] = 0  # padding tokens
    y = torch.randint(0, 9, (6, 5), generator=gen)
    subset = torch.arange(3).repeat_interleave(2)
    coef = np.random.default_rng(1).normal(size=(2, 3, 2))
    ref, plain = _reference(model, x, y, subset, 3, 2, coef)
    res = CodedGradient(model, 2)(x, y, subset, coef, plain_weight=1.0)
    assert float((res.blocks.double() - ref).norm() / ref.norm()) < 1e-5
    assert float((res.plain.double() - plain).norm() / plain.norm()) < 1e-5
    assert torch.count_nonzero(res.plain[:6]) == 0  # row 0 of the embedding table


def test_a_module_returning_a_tuple_is_refused_in_one_line() -> None:
    class Pair(nn.Module):  # owns a parameter and returns two tensors
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.eye(4))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x @ self.weight, x

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair, self.bias = Pair(), nn.Parameter(torch.zeros(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pair(x)[0] + self.bias

        def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs, targets, reduction="sum")

    model = Model()
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ConfigError, match="Pair returned a tuple, not a tensor"):
        CodedGradient(model, 1).check(x, y)


@pytest.mark.parametrize("chunk", [1 << 23, 200], ids=["one_call", "chunked"])
@pytest.mark.parametrize("layout", ["equal", "equal_kept", "interleaved", "unequal"])
def test_conv_per_subset_products(monkeypatch: pytest.MonkeyPatch, chunk: int,
                                  layout: str) -> None:
    """The grouped (per-subset) convolution weight gradients: a stem with 1 input channel
    (channels-last), wider convolutions (6 → 8, stride 2, dilation 2, no bias), short and
    unordered subsets, the subsets split into chunks, block boundaries inside the weights;
    equal subsets interleaved by the engine (``equal``) or kept in order (``equal_kept``:
    the copying path), and a batch that arrives interleaved."""
    from agc_pipeline.training import weight_gradients

    monkeypatch.setattr(weight_gradients, "CONV_CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.GroupNorm(3, 6), nn.ReLU(),
                        nn.Conv2d(6, 8, 3, stride=2, padding=2, dilation=2, bias=False),
                        nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    model = _Model(net)
    gen = torch.Generator().manual_seed(1)
    if layout in ("equal", "equal_kept"):
        k, subset = 4, torch.arange(4).repeat_interleave(3)
    elif layout == "interleaved":
        k, subset = 4, torch.arange(4).repeat(3)
    else:
        k, subset = 4, torch.tensor([2, 0, 3, 0, 1, 0, 2, 3, 0, 1, 1, 0])
    x, y = torch.randn(12, 1, 9, 9, generator=gen), torch.randint(0, 5, (12,), generator=gen)
    for m in (1, 3):
        engine = CodedGradient(model, m)
        assert engine.interleave
        engine.interleave = layout != "equal_kept"
        coef = np.random.default_rng(m).normal(size=(m, k, 2))
        ref, plain = _reference(model, x, y, subset, k, m, coef)
        res = engine(x, y, subset, coef, plain_weight=1.0)
        assert float((res.blocks.double() - ref).norm() / ref.norm()) < 1e-5
        assert float((res.plain.double() - plain).norm() / plain.norm()) < 1e-5


def test_group_norm_uses_the_forward_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupNorm's Σ δ ⊙ x̂ comes from the mean and 1/σ the forward kept (no recomputed x̂),
    and equals the reference (input far from zero mean: the centring is exact enough)."""
    from agc_pipeline.training import weight_gradients

    torch.manual_seed(0)
    model = _Model(nn.Sequential(nn.Conv2d(2, 8, 3), nn.GroupNorm(4, 8), nn.ReLU(),
                                 nn.GroupNorm(2, 8), nn.Flatten(), nn.Linear(8 * 16, 5)))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 6, 6, generator=gen) * 3 + 20
    y = torch.randint(0, 5, (8,), generator=gen)
    subset = torch.arange(4).repeat_interleave(2)
    coef = np.random.default_rng(0).normal(size=(2, 4, 2))
    ref, plain = _reference(model, x, y, subset, 4, 2, coef)
    engine = CodedGradient(model, 2)
    original = F.group_norm
    calls = []

    def counting(inp: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(inp.requires_grad or torch.is_grad_enabled())
        return original(inp, *args, **kwargs)

    monkeypatch.setattr(weight_gradients.F, "group_norm", counting)
    res = engine(x, y, subset, coef, plain_weight=1.0)
    assert calls and all(calls)  # only the forward's calls (grad enabled), none under no_grad
    assert float((res.blocks.double() - ref).norm() / ref.norm()) < 1e-5
    assert float((res.plain.double() - plain).norm() / plain.norm()) < 1e-5


def test_linear_path_choice() -> None:
    """One column (a worker's message) is always per sample: one product of exactly the
    plain weight-gradient flops. With c ≥ 2 columns, per subset once rows per subset × c
    reach PER_SUBSET_MIN_ROWS (measured break-even: 2 columns at 8-10 rows, 3 at 6)."""
    from agc_pipeline.training.weight_gradients import PER_SUBSET_MIN_ROWS, linear_path

    assert PER_SUBSET_MIN_ROWS == 20
    assert [linear_path(rows, 1) for rows in (1, 16, 128, 10**6)] == ["per_sample"] * 4
    assert linear_path(9, 2) == "per_sample" and linear_path(10, 2) == "per_subset"
    assert linear_path(6, 3) == "per_sample" and linear_path(7, 3) == "per_subset"
    assert linear_path(128, 2) == "per_subset"


def test_interleaved_batches_gather_by_views_and_convolutions_read_them_in_place(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of equal contiguous subsets is reordered once (sample r of every subset side
    by side); the grouped convolutions then take x and δ as views (no scratch copies), and
    the loss and the combinations equal those of the contiguous batch."""
    from agc_pipeline.training import weight_gradients as wg

    groups = wg.Groups(torch.tensor([0, 1, 2, 0, 1, 2]))
    assert groups.interleaved and not groups.contiguous
    t = torch.arange(6.0)[:, None]
    assert groups.gather(t)[..., 0].tolist() == [[0, 3], [1, 4], [2, 5]]
    assert groups.gather(t).data_ptr() == t.data_ptr()
    assert not wg.Groups(torch.tensor([0, 1, 2, 1, 0, 2])).interleaved  # not the same order

    torch.manual_seed(0)
    model = _Model(nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.GroupNorm(3, 6),
                                 nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)))
    gen = torch.Generator().manual_seed(2)
    k, b = 5, 3
    x, y = torch.randn(k * b, 3, 8, 8, generator=gen), torch.randint(0, 5, (k * b,),
                                                                      generator=gen)
    subset = torch.arange(k).repeat_interleave(b)
    coef = np.random.default_rng(0).normal(size=(2, k, 2))
    kept = CodedGradient(model, 2)
    kept.interleave = False
    ref = kept(x, y, subset, coef, plain_weight=1.0)
    takes: list[int] = []
    real_take = wg.Scratch.take

    def spy(self, shape, like, slot=0):  # type: ignore[no-untyped-def]
        takes.append(slot)
        return real_take(self, shape, like, slot)

    monkeypatch.setattr(wg.Scratch, "take", spy)
    res = CodedGradient(model, 2)(x, y, subset, coef, plain_weight=1.0)
    assert 1 not in takes and 2 not in takes  # x and δ of the 6-channel conv read in place
    assert res.loss == pytest.approx(ref.loss, rel=1e-6)
    assert float((res.blocks - ref.blocks).norm() / ref.blocks.norm()) < 1e-6
    assert float((res.plain - ref.plain).norm() / ref.plain.norm()) < 1e-6


@pytest.mark.parametrize("shape", [(8,), (4, 8)], ids=["last_dim", "two_dims"])
def test_layer_norm_uses_the_forward_statistics(monkeypatch: pytest.MonkeyPatch,
                                                shape: tuple[int, ...]) -> None:
    """LayerNorm's x̂ comes from the mean and 1/σ the forward kept (F.layer_norm is called
    only by the forward), over one or two normalised dimensions, and the combinations equal
    the reference."""
    from agc_pipeline.training import weight_gradients

    torch.manual_seed(0)
    model = _Model(nn.Sequential(nn.Linear(8, 8), nn.Unflatten(1, (1, 8)) if len(shape) == 1
                                 else nn.Identity(), nn.LayerNorm(shape), nn.Flatten(),
                                 nn.Linear(8 if len(shape) == 1 else 32, 5)))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, *((8,) if len(shape) == 1 else (4, 8)), generator=gen) * 3 + 5
    y = torch.randint(0, 5, (8,), generator=gen)
    subset = torch.arange(4).repeat_interleave(2)
    coef = np.random.default_rng(0).normal(size=(2, 4, 2))
    ref, plain = _reference(model, x, y, subset, 4, 2, coef)
    original = F.layer_norm
    calls = []

    def counting(inp: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return original(inp, *args, **kwargs)

    monkeypatch.setattr(weight_gradients.F, "layer_norm", counting)
    monkeypatch.setattr(torch.nn.functional, "layer_norm", counting)
    res = CodedGradient(model, 2)(x, y, subset, coef, plain_weight=1.0)
    assert calls and all(calls)  # only the forward's calls (grad enabled), none under no_grad
    assert float((res.blocks.double() - ref).norm() / ref.norm()) < 1e-5
    assert float((res.plain.double() - plain).norm() / plain.norm()) < 1e-5

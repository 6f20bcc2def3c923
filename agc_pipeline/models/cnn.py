"""A small residual CNN (ResNet-style) for 28×28 and 32×32 images, softmax cross-entropy.

Layout: a 3×3 stride-2 stem convolution to ``width`` channels, then ``depth`` residual blocks
(two 3×3 convolutions each, He et al. 2016); block 0 keeps width and resolution, every later
block doubles the channels and halves the resolution (stride 2, with a 1×1 projection on
the shortcut). Global average pooling and a linear head follow. With the defaults (width
16, depth 3) a 28×28 image goes 14×14×16 → 14×14×16 → 7×7×32 → 4×4×64 → 64 → 10 logits
(d = 77,562); 32×32×3 images (CIFAR-10) give 16×16 → 8×8 → 4×4 maps, d = 77,850.

Normalisation is GroupNorm (Wu & He 2018), never BatchNorm: each sample is normalised with
its own statistics, so a sample's output depends on that sample only. That is what coded
SGD needs: the partial gradient of data subset D_i (paper Section II) must not depend on which other
samples share the forward pass, and no running statistics need a rule for stragglers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from agc_pipeline.models.base import CodedModel, dim_arg, generator, seeded_linear
from agc_pipeline.validation import require_int

__all__ = ["CNN", "ResidualBlock"]


def _conv(c_in: int, c_out: int, size: int, stride: int, gen: torch.Generator) -> nn.Conv2d:
    """Bias-free convolution with He-normal init, std √(2 / fan_in), drawn from ``gen``."""
    conv = nn.utils.skip_init(nn.Conv2d, c_in, c_out, size, stride=stride,
                              padding=size // 2, bias=False)
    with torch.no_grad():
        conv.weight.normal_(0.0, math.sqrt(2.0 / (c_in * size * size)), generator=gen)
    return conv


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with gcd(8, channels) groups (weight 1, bias 0)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResidualBlock(nn.Module):
    """``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``, the shortcut the identity or
    a 1×1 stride-``stride`` projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, gen: torch.Generator) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, c_out, 3, stride, gen)
        self.norm1 = _norm(c_out)
        self.conv2 = _conv(c_out, c_out, 3, 1, gen)
        self.norm2 = _norm(c_out)
        self.shortcut = (None if stride == 1 and c_in == c_out
                         else _conv(c_in, c_out, 1, stride, gen))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm2(self.conv2(F.relu(self.norm1(self.conv1(x)))))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class CNN(CodedModel):
    """Residual CNN classifier on images (N, C, H, W); outputs logits (N, num_classes).

    ``width``: channels after the stem (block j ≥ 1 has width·2^j); ``depth``: residual
    blocks; ``in_channels``, ``image_size`` (H = W), ``num_classes``: null = from the data set.
    """

    inputs = ("image",)

    def __init__(self, in_channels: int | None = None, num_classes: int | None = None,
                 image_size: int | None = None, width: int = 16, depth: int = 3,
                 seed: int = 0) -> None:
        super().__init__()
        gen = generator(seed)
        self.in_channels = dim_arg(in_channels, "in_channels")
        self.image_size = dim_arg(image_size, "image_size", 8)
        width = require_int(width, "model.width", 1)
        depth = require_int(depth, "model.depth", 1)
        classes = dim_arg(num_classes, "num_classes", 2)
        self.stem = _conv(self.in_channels, width, 3, 2, gen)
        self.stem_norm = _norm(width)
        blocks, channels = [], width
        for j in range(depth):
            out = width * 2**j
            blocks.append(ResidualBlock(channels, out, 1 if j == 0 else 2, gen))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.head = seeded_linear(channels, classes, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[-3:]) != expected:
            raise ValueError(f"CNN expects images of shape (N, {', '.join(map(str, expected))})"
                             f", got {tuple(x.shape)}")
        h = self.blocks(F.relu(self.stem_norm(self.stem(x))))
        return self.head(h.mean(dim=(-2, -1)))

    def loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, reduction="sum")

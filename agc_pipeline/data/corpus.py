"""Character-level language modelling data: :func:`text` and its offline default corpus.

A corpus (a UTF-8 file, every file of a folder, or the generated default) becomes a stream
of character ids; its first ``1 − test_fraction`` part gives the training windows, the rest
the test windows (a contiguous split, so no test text is seen in training). Window w of
length T = ``context`` starting at t has input ``chars[t : t+T]`` and target
``chars[t+1 : t+T+1]``: the next character at every position.

The default corpus (:func:`grammar_corpus`) is generated from a fixed seed by a small
grammar of English-like sentences: it exists on every machine without a download or a
bundled file, is the same everywhere (a test pins its hash), and has enough structure
(a few hundred words, agreement, clauses) for a small model's loss to fall clearly.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from agc_pipeline.data.base import Dataset, check_size
from agc_pipeline.errors import ConfigError, require
from agc_pipeline.validation import require_finite, require_int

__all__ = ["GRAMMAR_SEED", "grammar_corpus", "read_corpus", "text"]

#: seed of the default corpus (fixed: every run and machine trains on the same text)
GRAMMAR_SEED = 2603
#: length of the default corpus in characters
GRAMMAR_CHARS = 400_000

_DET = ["the", "a", "every", "some", "this", "that", "my", "our", "one", "no"]
_DET_PLURAL = ["the", "some", "many", "these", "those", "my", "our", "all the", "few", "two"]
_ADJ = ["small", "old", "quiet", "bright", "green", "heavy", "young", "careful", "strange",
        "cold", "warm", "happy", "tired", "clever", "silent", "red", "wooden", "tall",
        "gentle", "busy", "distant", "sharp", "lazy", "brave"]
_NOUN = [("cat", "cats"), ("dog", "dogs"), ("child", "children"), ("teacher", "teachers"),
         ("river", "rivers"), ("city", "cities"), ("house", "houses"), ("bird", "birds"),
         ("farmer", "farmers"), ("letter", "letters"), ("garden", "gardens"),
         ("horse", "horses"), ("window", "windows"), ("story", "stories"), ("king", "kings"),
         ("machine", "machines"), ("road", "roads"), ("woman", "women"), ("man", "men"),
         ("tree", "trees"), ("boat", "boats"), ("song", "songs"), ("friend", "friends"),
         ("doctor", "doctors"), ("book", "books"), ("village", "villages"),
         ("stone", "stones"), ("student", "students")]
# (third person singular, plural / base, past)
_VERB_T = [("sees", "see", "saw"), ("finds", "find", "found"), ("likes", "like", "liked"),
           ("follows", "follow", "followed"), ("builds", "build", "built"),
           ("carries", "carry", "carried"), ("watches", "watch", "watched"),
           ("helps", "help", "helped"), ("paints", "paint", "painted"),
           ("remembers", "remember", "remembered"), ("visits", "visit", "visited"),
           ("reads", "read", "read"), ("keeps", "keep", "kept"),
           ("chases", "chase", "chased"), ("knows", "know", "knew"),
           ("writes", "write", "wrote")]
_VERB_I = [("sleeps", "sleep", "slept"), ("sings", "sing", "sang"),
           ("waits", "wait", "waited"), ("runs", "run", "ran"), ("laughs", "laugh", "laughed"),
           ("falls", "fall", "fell"), ("works", "work", "worked"),
           ("dreams", "dream", "dreamed"), ("walks", "walk", "walked")]
_ADV = ["slowly", "quickly", "often", "again", "quietly", "today", "at night", "every day",
        "in the morning", "without a word", "together", "alone"]
_PREP = ["near", "behind", "under", "beside", "across", "inside", "above", "around"]
_NAME = ["Anna", "Omar", "Lena", "Tom", "Mira", "Jonas", "Sara", "Ivan", "Nora", "Paul"]
_JOIN = ["and", "but", "because", "so", "while"]


class _Grammar:
    """Sentences from a seeded ``random.Random`` (its integer methods are stable across
    Python versions, so the corpus is the same everywhere)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def pick(self, options: list) -> object:
        return options[self.rng.randrange(len(options))]

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent

    def noun_phrase(self, depth: int = 0) -> tuple[str, bool]:
        """(phrase, plural)."""
        if self.chance(15):
            return str(self.pick(_NAME)), False
        plural = self.chance(35)
        singular, plural_form = self.pick(_NOUN)  # type: ignore[misc]
        words = [str(self.pick(_DET_PLURAL if plural else _DET))]
        if self.chance(40):
            words.append(str(self.pick(_ADJ)))
        words.append(plural_form if plural else singular)
        if depth == 0 and self.chance(20):
            words += [str(self.pick(_PREP)), self.noun_phrase(depth + 1)[0]]
        return " ".join(words), plural

    def clause(self) -> str:
        subject, plural = self.noun_phrase()
        tense = 2 if self.chance(30) else (1 if plural else 0)
        if self.chance(65):
            verb = str(self.pick(_VERB_T)[tense])  # type: ignore[index]
            words = [subject, verb, self.noun_phrase()[0]]
        else:
            words = [subject, str(self.pick(_VERB_I)[tense])]  # type: ignore[index]
        if self.chance(30):
            words.append(str(self.pick(_ADV)))
        return " ".join(words)

    def sentence(self) -> str:
        body = self.clause()
        if self.chance(30):
            body += f"{',' if self.chance(50) else ''} {self.pick(_JOIN)} {self.clause()}"
        end = "?" if self.chance(5) else ("!" if self.chance(5) else ".")
        return body[0].upper() + body[1:] + end


@lru_cache(maxsize=2)
def grammar_corpus(num_chars: int = GRAMMAR_CHARS, seed: int = GRAMMAR_SEED) -> str:
    """About ``num_chars`` characters of generated English-like text: paragraphs of 3–7
    sentences, one paragraph per line (deterministic given ``seed``)."""
    grammar = _Grammar(seed)
    lines: list[str] = []
    total = 0
    while total < num_chars:
        line = " ".join(grammar.sentence() for _ in range(3 + grammar.rng.randrange(5)))
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines) + "\n"


def read_corpus(path: str) -> str:
    """The UTF-8 text of a file, or of every file under a folder (recursively, sorted by
    path, hidden files and folders skipped) joined by newlines."""
    root = Path(path).expanduser()
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts))
    elif root.exists():  # a FIFO, a device, a socket: not text to read whole
        raise ConfigError(f"dataset.path={path}: not a regular file or a folder")
    else:
        raise ConfigError(f"dataset.path={path}: no such file or folder")
    require(bool(files), f"dataset.path={path}: the folder holds no files")
    texts = []
    for file in files:
        try:
            texts.append(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"dataset.path: {file} is not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"dataset.path: cannot read {file} ({exc})") from None
    return "\n".join(texts)


def _windows(ids: np.ndarray, context: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows (x, y) of ``ids`` with starts 0, stride, 2·stride, …; y = x shifted by 1."""
    count = max(0, (len(ids) - context - 1) // stride + 1)
    index = (np.arange(count) * stride)[:, None] + np.arange(context)
    return ids[index], ids[index + 1]


def text(path: str | None = None, context: int = 64, stride: int | None = None,
         test_fraction: float = 0.1, train_size: int | None = None,
         test_size: int | None = None, seed: int = 0, partition: str = "iid") -> Dataset:
    """Character-level language modelling windows: x, y int64 (N, ``context``), y[:, t] the
    character after x[:, t].

    ``path``: a UTF-8 file or a folder of them (see :func:`read_corpus`); None: the generated
    default corpus (:func:`grammar_corpus`). The vocabulary is the sorted set of the corpus's
    characters. ``stride`` (default ``context``: non-overlapping windows, each character a
    target once per epoch) spaces the window starts. The last ``test_fraction`` of the text
    gives the test windows. ``train_size`` / ``test_size`` (default: all windows) pick a
    seeded random subset; the windows come in an order shuffled by ``seed``.
    """
    context = require_int(context, "dataset.context", 1)
    stride = context if stride is None else require_int(stride, "dataset.stride", 1)
    test_fraction = require_finite(test_fraction, "dataset.test_fraction", 0.0, 0.9)
    train_size = check_size(train_size, "train_size", 1)
    test_size = check_size(test_size, "test_size", 0)
    corpus = grammar_corpus() if path is None else read_corpus(path)
    require(corpus.strip() != "", f"dataset.path={path} holds no text")
    codes = np.frombuffer(corpus.encode("utf-32-le"), dtype="<u4")
    uniq, ids = np.unique(codes, return_inverse=True)
    ids = ids.astype(np.int64).reshape(-1)
    cut = int(round(len(ids) * (1.0 - test_fraction)))
    rng = np.random.default_rng(seed)
    tensors = []
    for part, size, key in ((ids[:cut], train_size, "train_size"),
                            (ids[cut:], test_size, "test_size")):
        x, y = _windows(part, context, stride)
        count = len(x) if size is None else size
        require(count <= len(x),
                f"dataset.{key} must be at most {len(x)}, the windows of dataset.context="
                f"{context} chars (stride {stride}) in that part of the corpus (got {count})")
        idx = rng.permutation(len(x))[:count]
        tensors += [torch.from_numpy(x[idx]), torch.from_numpy(y[idx])]
    require(len(tensors[0]) >= 1,
            f"dataset.context={context}: the training text ({cut} chars) is too short for "
            "one window; use a longer corpus or a smaller context")
    vocab = "".join(chr(int(c)) for c in uniq)
    name = "text" if path is None else f"text:{Path(path).name}"
    return Dataset(*tensors, num_classes=len(vocab), name=name, kind="tokens", vocab=vocab,
                   partition=partition)

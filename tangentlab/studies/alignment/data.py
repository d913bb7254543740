"""Data of items 2-5 of the alignment study: the train/test split and the training set of one
run, with its "difficult" examples (random labels, or examples of another task)."""

from __future__ import annotations

import torch

from ..framework.data import Split, load_dataset
from ..framework.datasets import mix_other_dataset, randomize_labels
from .config import AlignmentConfig
from .models import model_layout


def load_alignment_split(cfg: AlignmentConfig) -> Split:
    """The train/test split of items 2-5, through the shared loader
    :func:`tangentlab.studies.framework.data.load_dataset`: digits (75/25 stratified, standardized per
    pixel), or MNIST / CIFAR-10 from ``data_dir`` (official splits; the first ``max_per_class``
    *training* examples of each class, the whole test set; ``x/255`` standardized with the
    training mean and std, one scalar for MNIST as in the paper's code, per channel for CIFAR-10)."""
    return load_dataset(cfg.dataset, cfg.seed, model_layout(cfg.model), cfg.data_dir, cfg.max_per_class or None)


def training_set(split: Split, kind: str, noise: float, difficult: str, fraction: float, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, is_hard)``: the training set of one run of items 2-5. ``kind = "noise"``: a fraction
    ``noise`` of the labels replaced by uniform random labels (items 2-3); ``kind = "hier"``
    (item 4): a fraction ``fraction`` of the labels made random (``difficult = "random"``), or of
    the examples replaced by a harder but learnable task (``"other"``, ``make_classification``;
    paper 000 Fig. 4(b)). ``is_hard`` marks the changed examples."""
    x, y = split.x_train, split.y_train
    is_hard = torch.zeros(len(y), dtype=torch.bool)
    if kind == "noise" and noise > 0:
        y, is_hard = randomize_labels(y, noise, split.n_classes, seed + 11)
    elif kind == "hier" and difficult == "random":
        y, is_hard = randomize_labels(y, fraction, split.n_classes, seed + 12)
    elif kind == "hier":
        x, y, is_hard = mix_other_dataset(x, y, fraction, seed + 13, split.n_classes)
    return x, y, is_hard


def subset(mask: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``k`` indices where ``mask`` is true, drawn with a seeded generator."""
    idx = torch.nonzero(mask, as_tuple=False).flatten()
    perm = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed))
    return idx[perm[:k]]

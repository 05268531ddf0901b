"""Figures for the notebooks: each function draws one figure, saves it as `<folder>/<name>.png` and returns it (a
notebook cell that ends with the call shows it). matplotlib is imported here only (the `notebooks` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from distill.analysis.predictions import Reliability


def _pyplot() -> Any:
    import matplotlib

    if "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")  # outside Jupyter: files only
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, folder: str | Path, name: str) -> Any:
    """Write `figure` to `folder/name.png` (the folder is created) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(folder / f"{name}.png", dpi=100)
    return figure


def per_seed(
    results: Mapping[str, Sequence[Mapping[str, float]]], metric: str, folder: str | Path, name: str, title: str = ""
) -> Any:
    """One column of dots per variant (one dot per seed) with its mean as a bar: `results[variant] = [metrics]`."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for x, runs in enumerate(results.values()):
        values = [100 * run[metric] for run in runs if metric in run]
        axes.bar(x, sum(values) / len(values), color="#c6dbef", width=0.6)
        axes.scatter([x] * len(values), values, color="#08519c", zorder=3)
    axes.set_xticks(range(len(results)), list(results))
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(title or metric)
    lows = [100 * r[metric] for runs in results.values() for r in runs if metric in r]
    axes.set_ylim(max(0.0, min(lows) - 5), min(100.0, max(lows) + 3))
    plt.close(figure)
    return save(figure, folder, name)


def reliability_diagram(diagrams: Mapping[str, Reliability], folder: str | Path, name: str) -> Any:
    """Accuracy against confidence per bin for each model, with the diagonal of perfect calibration."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    for label, diagram in diagrams.items():
        kept = diagram.count > 0
        axes.plot(
            diagram.confidence[kept], diagram.accuracy[kept], marker="o", label=f"{label} (ECE {diagram.ece:.3f})"
        )
    axes.set_xlabel("confidence (top-1 probability)")
    axes.set_ylabel("accuracy")
    axes.legend(fontsize=8)
    plt.close(figure)
    return save(figure, folder, name)


def lines(
    x: Sequence[float] | torch.Tensor,
    series: Mapping[str, Sequence[float] | torch.Tensor],
    folder: str | Path,
    name: str,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
) -> Any:
    """Several named series over the same x."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    for label, values in series.items():
        axes.plot(list(map(float, x)), [float(v) for v in values], marker="o", markersize=3, label=label)
    if logy:
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    plt.close(figure)
    return save(figure, folder, name)


def bars(
    groups: Mapping[str, Sequence[float] | torch.Tensor], folder: str | Path, name: str, xlabel: str, title: str = ""
) -> Any:
    """Side-by-side bars of several vectors over the same positions (e.g. a logit vector before and after)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(groups)
    for i, (label, values) in enumerate(groups.items()):
        values = [float(v) for v in values]
        axes.bar([x + i * width for x in range(len(values))], values, width=width, label=label)
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    plt.close(figure)
    return save(figure, folder, name)

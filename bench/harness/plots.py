"""The benchmark plots (matplotlib, rendered off-screen to PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from matplotlib.figure import Figure

from .timings import RunTimings, deciles


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def grouped_bars(
    path: Path,
    title: str,
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    ylabel: str,
    reference: tuple[float, str] | None = None,
) -> Path:
    """One group of bars per category, one bar per series; an optional horizontal reference line."""
    figure, axes = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(series))
    for index, (label, values) in enumerate(series.items()):
        positions = [c + (index - (len(series) - 1) / 2) * width for c in range(len(categories))]
        bars = axes.bar(positions, values, width, label=label)
        axes.bar_label(bars, fmt="%.0f", fontsize=7)
    if reference is not None:
        axes.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    axes.set_xticks(range(len(categories)), categories, fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.legend(fontsize=8)
    return _save(figure, path)


def staircase(
    path: Path, title: str, runs: Mapping[str, RunTimings], slot_bound: float | None = None
) -> Path:
    """x = start index, y = completion time, one colour per run, with per-decile medians."""
    figure, axes = plt.subplots(figsize=(9, 5))
    for index, (label, timings) in enumerate(runs.items()):
        colour = f"C{index}"
        points = [(i, w.completed_at) for i, w in enumerate(timings.workflows) if w.completed_at is not None]
        axes.scatter(
            [p[0] for p in points],
            [p[1] for p in points],
            s=0.3,
            alpha=0.35,
            color=colour,
            label=f"{label}: each workflow",
        )
        table = deciles(timings)
        size = len(timings.workflows) / 10
        axes.hlines(
            [row["completion_median"] for row in table],
            [round((row["decile"] - 1) * size) for row in table],
            [round(row["decile"] * size) - 1 for row in table],
            linewidth=2.5,
            color=colour,
            label=f"{label}: decile median",
        )
    if slot_bound is not None:
        axes.axhline(slot_bound, color="grey", linestyle="--", linewidth=1, label="slot-bound minimum span")
    axes.set_xlabel("start index (order the workflows were started in)")
    axes.set_ylabel("completion time (s since the first start)")
    axes.set_title(title)
    axes.legend(fontsize=8, markerscale=12)
    return _save(figure, path)


def timelines(
    path: Path,
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    ylabel: str,
    reference: tuple[float, str] | None = None,
    second: Mapping[str, Sequence[tuple[float, float]]] | None = None,
    second_label: str = "",
    events: Sequence[tuple[float, str]] = (),
) -> Path:
    """Lines of (time, value); an optional reference line, second y axis, and vertical event marks."""
    figure, axes = plt.subplots(figsize=(9, 4.5))
    for label, points in series.items():
        axes.plot([p[0] for p in points], [p[1] for p in points], label=label, linewidth=1.2)
    if reference is not None:
        axes.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    for index, (when, label) in enumerate(events):
        axes.axvline(when, color=f"C{index + 3}", linestyle=":", linewidth=1.2, label=label)
    axes.set_xlabel("seconds since the first workflow started")
    axes.set_ylabel(ylabel)
    handles, labels = axes.get_legend_handles_labels()
    if second:
        other = axes.twinx()
        for label, points in second.items():
            other.plot(
                [p[0] for p in points], [p[1] for p in points], label=label, linewidth=1, linestyle=":"
            )
        other.set_ylabel(second_label)
        more_handles, more_labels = other.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    axes.legend(handles, labels, fontsize=8)
    axes.set_title(title)
    return _save(figure, path)


def lines(
    path: Path,
    title: str,
    series: Mapping[str, Sequence[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    *,
    log_x: bool = False,
    log_y: bool = False,
    reference: tuple[float, str] | None = None,
) -> Path:
    """Lines of (x, y) with markers, one per series; optional log axes and a dashed reference level."""
    figure, axes = plt.subplots(figsize=(9, 4.5))
    drawn = {label: points for label, points in series.items() if points}
    for label, points in drawn.items():
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, linewidth=1.2)
    if reference is not None:
        axes.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
    # A log axis needs positive values; with nothing to draw the plot stays linear (and empty).
    if log_x and any(p[0] > 0 for points in drawn.values() for p in points):
        axes.set_xscale("log", base=2)
    if log_y and any(p[1] > 0 for points in drawn.values() for p in points):
        axes.set_yscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if drawn or reference is not None:
        axes.legend(fontsize=8)
    axes.grid(True, alpha=0.3)
    return _save(figure, path)

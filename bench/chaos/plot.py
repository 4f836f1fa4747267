"""The soak's timeline: workflows finished over time, with every fault marked where it hit."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to files only

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first

from .invariants import Fault


def timeline(path: Path, points: Sequence[tuple[float, int]], faults: Sequence[Fault], total: int) -> Path:
    figure, axes = plt.subplots(figsize=(10, 4.5))
    axes.plot([t for t, _ in points], [n for _, n in points], color="tab:blue", label="workflows finished")
    colors = plt.get_cmap("tab10")
    kinds = list(dict.fromkeys(fault.kind for fault in faults))
    for fault in faults:
        color = colors(1 + kinds.index(fault.kind) % 9)
        label = fault.kind if fault is next(f for f in faults if f.kind == fault.kind) else None
        axes.axvline(fault.at, color=color, linestyle="--", linewidth=1, label=label)
    axes.set_ylim(0, total * 1.02)
    axes.set_xlabel("seconds into the run")
    axes.set_ylabel("workflows finished")
    axes.set_title(f"Chaos soak: {total} workflows, {len(faults)} faults")
    axes.legend(loc="lower right", fontsize=7)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path

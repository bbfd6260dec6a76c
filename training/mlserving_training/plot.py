"""A picture of the test split: forecasts, naive forecasts and actuals, for humans reviewing a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_forecasts(
    times: np.ndarray,
    actual: np.ndarray,
    predicted: np.ndarray,
    naive: np.ndarray,
    path: Path,
    title: str,
    last: int = 24 * 14,
) -> Path:
    """PNG of the last `last` test points (two weeks of hourly data by default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sl = slice(-last, None)
    hours = (np.asarray(times)[sl] - times[sl][0]) / 3600.0
    fig, ax = plt.subplots(figsize=(11, 4), dpi=100)
    ax.plot(hours, np.asarray(actual)[sl], label="actual", color="black", linewidth=1.2)
    ax.plot(hours, np.asarray(predicted)[sl], label="model", color="tab:blue", linewidth=1.0)
    ax.plot(hours, np.asarray(naive)[sl], label="naive (last value)", color="tab:orange", linewidth=0.8, alpha=0.7)
    return _save(fig, ax, path, title, "hours into the plotted test range")


def plot_candidates(
    times: np.ndarray,
    actual: np.ndarray,
    lines: dict[str, np.ndarray],
    path: Path,
    title: str,
    last: int = 336,
) -> Path:
    """PNG of actuals and any number of forecasts (models and baselines) over the last `last` targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sl = slice(-last, None)
    t = np.asarray(times)[sl]
    hours = (t - t[0]) / 3600.0
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    ax.plot(hours, np.asarray(actual)[sl], label="actual", color="black", linewidth=1.4)
    for name, values in lines.items():
        ax.plot(hours, np.asarray(values)[sl], label=name, linewidth=0.9, alpha=0.85)
    return _save(fig, ax, path, title, "hours into the plotted backtest range", legend_size="small")


def _save(fig: Any, ax: Any, path: Path | str, title: str, xlabel: str, legend_size: str = "medium") -> Path:
    """Labels, legend and grid every forecast plot shares, then the PNG."""
    import matplotlib.pyplot as plt  # imported late like the callers: training only needs it here

    ax.set_xlabel(xlabel)
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path

"""Training-time input statistics stored in metadata.input_stats, for drift checks by the server."""

from __future__ import annotations

import numpy as np

from mlserving_common.package import histogram_fractions

#: Normalised inputs are z-scores: [-4, 4] in 0.5 steps covers them; outliers land in the end bins.
DEFAULT_EDGES = tuple(float(e) for e in np.linspace(-4.0, 4.0, 17))


def input_stats(x_train: np.ndarray, edges: tuple[float, ...] = DEFAULT_EDGES) -> dict[str, object]:
    """Histogram of every normalised input value of the training windows (PSI's reference)."""
    flat = np.asarray(x_train, dtype=np.float64).reshape(-1)
    return {
        "space": "normalized",
        "kind": "histogram",
        "edges": list(edges),
        "fractions": histogram_fractions(flat.tolist(), edges),
        "count": int(flat.size),
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "min": float(flat.min()),
        "max": float(flat.max()),
    }

"""The Taylor series (real, public) read out of pmdarima 2.1.1's wheel, for forecast-quality tests.

Source: J.W. Taylor (2003), "Short-term electricity demand forecasting using double seasonal
exponential smoothing", JORS 54, 799-805; half-hourly electricity demand in England and Wales,
5 June - 27 August 2000, in MW (4,032 readings), as shipped by pmdarima (`load_taylor`).
ci/bootstrap.sh fetches the wheel into $MLSERVING_CACHE/data; pmdarima itself is never installed
or imported: the numbers are parsed out of pmdarima/datasets/taylor.py inside the zip.
"""

from __future__ import annotations

import ast
import functools
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

CACHE = Path(os.environ.get("MLSERVING_CACHE", "/var/cache/ml-serving"))
WHEEL_GLOB = "pmdarima-2.1.1-*.whl"
#: Monday 5 June 2000 00:00 UTC, the series' first half-hour.
TAYLOR_START = 960_163_200
TAYLOR_INTERVAL = 1800


def wheel_path() -> Path | None:
    found = sorted((CACHE / "data").glob(WHEEL_GLOB))
    return found[0] if found else None


@functools.lru_cache(maxsize=1)
def taylor_values() -> np.ndarray:
    """The 4,032 readings in MW; skips (or fails in CI) when the wheel is absent."""
    wheel = wheel_path()
    if wheel is None:
        message = f"Taylor series: {CACHE / 'data' / WHEEL_GLOB} absent (ci/bootstrap.sh fetches it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read("pmdarima/datasets/taylor.py").decode()
    start = source.index("np.array([") + len("np.array(")
    end = source.index("])", start) + 1
    values = np.asarray(ast.literal_eval(source[start:end]), dtype=np.float64)
    assert values.shape == (4032,), values.shape
    return values


def taylor_frame() -> pd.DataFrame:
    """The series as a CSV in the documented format (one series, unix seconds)."""
    values = taylor_values()
    return pd.DataFrame(
        {
            "station_id": "TAYLOR",
            "parameter_id": "MW",
            "reading_time": TAYLOR_START + TAYLOR_INTERVAL * np.arange(len(values), dtype=np.int64),
            "value": values,
        }
    )


def write_taylor_csv(path: Path) -> Path:
    taylor_frame().to_csv(path, index=False)
    return path

"""Reading BTS monitoring CSVs into one standard shape, and picking one series out of them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlserving_training.config import STANDARD_COLUMNS


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, column or series."""


@dataclass(frozen=True)
class RawData:
    """All rows of a CSV as strings (cleaning decides what is a number) plus its fingerprint."""

    frame: pd.DataFrame
    source: str
    sha256: str

    @property
    def rows(self) -> int:
        return len(self.frame)


def series_key(station_id: object, parameter_id: object) -> str:
    return f"{station_id}/{parameter_id}"


def load_csv(path: Path | str, columns: Mapping[str, str] | None = None) -> RawData:
    """Read every cell as text so that 'ERR' or '' reach the cleaning rules instead of failing here.

    `columns` maps a standard name (station_id, parameter_id, reading_time, value) to the CSV's
    own header, e.g. {"reading_time": "ts"}.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    return RawData(_standardise(frame, columns or {}, str(path)), str(path), hashlib.sha256(content).hexdigest())


def from_frame(frame: pd.DataFrame, source: str = "memory") -> RawData:
    """RawData for a frame already in standard columns (e.g. from the generator)."""
    text = frame[list(STANDARD_COLUMNS)].astype(str)
    digest = hashlib.sha256(text.to_csv(index=False).encode()).hexdigest()
    return RawData(text.reset_index(drop=True), source, digest)


def _standardise(frame: pd.DataFrame, columns: Mapping[str, str], source: str) -> pd.DataFrame:
    renames = {}
    for standard in STANDARD_COLUMNS:
        name = columns.get(standard, standard)
        if name not in frame.columns:
            raise DataError(
                f"{source}: column {name!r} (for {standard}) not found; columns are {list(frame.columns)}"
                " (map names with --column standard=csv_name)"
            )
        renames[name] = standard
    return frame[list(renames)].rename(columns=renames).reset_index(drop=True)


def list_series(raw: RawData) -> list[str]:
    """Series ids in the file, sorted, so that 'the first series' is stable across runs."""
    pairs = raw.frame[["station_id", "parameter_id"]].drop_duplicates()
    return sorted(series_key(s, p) for s, p in pairs.itertuples(index=False))


def select_series(raw: RawData, series: str = "") -> tuple[str, pd.DataFrame]:
    """Rows of one series (all of them if the file holds just one); empty `series` picks the first."""
    available = list_series(raw)
    if not available:
        raise DataError(f"{raw.source}: no rows")
    chosen = series or available[0]
    if chosen not in available:
        shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
        raise DataError(f"series: {chosen!r} not in {raw.source}; available: {shown}")
    station, parameter = chosen.split("/", 1)
    mask = (raw.frame["station_id"] == station) & (raw.frame["parameter_id"] == parameter)
    return chosen, raw.frame[mask].reset_index(drop=True)

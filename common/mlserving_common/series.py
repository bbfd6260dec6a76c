"""How consecutive request windows of one series line up (live accuracy and live records).

Requests carry a window of readings, not their times. When a client sends the window of each
new reading, window k+1 repeats window k shifted by one; a replica that serves only every N-th
window (shared subscription across N replicas) sees it shifted by N. The overlap tells both the
server (which reading is the actual for an earlier forecast) and the trainer (how to stitch
windows back into a series) where a window sits relative to the previous one.
"""

from __future__ import annotations

from collections.abc import Sequence


def overlap_shift(previous: Sequence[float], current: Sequence[float]) -> int | None:
    """Smallest k >= 0 with previous[k:] == current[:n - k] for windows of one length n, else None.

    0 = the same window again (a retry); 1 = the next reading; k > 1 = k - 1 windows were served
    elsewhere; None = no shared reading (a gap, another series, or a shift of n or more).
    Readings are compared exactly: they are the client's own numbers, never recomputed.
    """
    n = len(previous)
    if n != len(current) or n == 0:
        return None
    if type(previous) is not type(current):  # a tuple never equals a list: compare like with like
        previous, current = tuple(previous), tuple(current)
    if previous[1:] == current[:-1]:  # the common case first: the next reading
        return 0 if previous[0] == current[0] and previous == current else 1
    if previous == current:
        return 0
    for k in range(2, n):
        if previous[k:] == current[: n - k]:
            return k
    return None


def actual_for(previous: Sequence[float], current: Sequence[float]) -> float | None:
    """The reading that followed `previous` (what a forecast from it predicted), if `current` shows it.

    With shift k in 1..n-1 the reading after previous[-1] is current[n - k]; a retry (k = 0) or
    no overlap gives None.
    """
    k = overlap_shift(previous, current)
    if not k:
        return None
    return float(current[len(current) - k])

"""How long and how hard each step of a run pushes: the full plan (~5 min) and the quick one (~1 min).

Durations are per measurement; a run is their sum plus process start-ups and the drains after
each load (grace periods end as soon as every answer is in).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

#: Batch sizes of the raw model sweep (LiteRT directly).
SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Plan:
    #: Each closed-loop saturation run. Echo, naive and ours are loaded in turns, `rounds` times,
    #: so that a change in the machine's background load hits all three alike.
    saturation_seconds: float = 4.0
    rounds: int = 3
    #: The two-replica saturation run.
    replicas_seconds: float = 8.0
    #: Each open-loop latency run at a fraction of our saturation throughput.
    latency_seconds: float = 8.0
    #: Each batched-request run.
    batched_seconds: float = 6.0
    #: Sending time of each flood at `flood_factors` x saturation.
    flood_seconds: float = 6.0
    #: Time budget per (model, batch size) of the raw model sweep.
    sweep_seconds: float = 0.25
    #: Requests kept outstanding in closed loop: far above what one batch takes, so the server never waits.
    concurrency: int = 256
    #: Messages kept outstanding with batched requests (each holds `batched_sizes` series).
    batched_concurrency: int = 16
    batched_sizes: tuple[int, ...] = (64, 256)
    latency_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    #: Open-loop floods, in turns: 2x (issue 7) and 4x, the load the server's memory bound is
    #: checked at (issue 13: peak RSS under 60 % of the chart's container limit).
    flood_factors: tuple[float, ...] = (2.0, 4.0)
    #: How long to wait for outstanding answers after a load stops; what is missing then is lost.
    grace_seconds: float = 10.0
    #: Flood answers queue up behind the backlog: allow more time before calling anything lost.
    flood_grace_seconds: float = 30.0
    #: Seconds of py-spy sampling of our server under saturation (with --profile).
    profile_seconds: float = 10.0

    #: Closed-loop warm-up of each server before its first measurement.
    warm_up_seconds: float = 1.0


FULL = Plan()
QUICK = replace(
    FULL,
    saturation_seconds=2.5,
    rounds=2,
    replicas_seconds=3.0,
    latency_seconds=3.0,
    batched_seconds=2.5,
    flood_seconds=2.5,
    sweep_seconds=0.1,
    profile_seconds=4.0,
    warm_up_seconds=0.5,
)

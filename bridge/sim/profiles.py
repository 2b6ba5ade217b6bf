"""Latency profiles: how slow the simulated control plane is, per verb and per lifecycle step.

Why: a simulator that answers in microseconds hides every timing bug of the bridge (retries that never fire,
races between a create and its watch event, scheduling backlogs). A profile turns the published Kubernetes
SLOs and benchmark numbers into delays the API server, scheduler and kubelet apply. ``instant`` keeps unit
tests fast; ``realistic`` is a healthy cluster; ``slo-edge`` sits at the p99 limits of the SLOs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# The standard normal quantile of 0.99: a lognormal's p99 is median * exp(sigma * this).
_Z_P99 = 2.3263478740408408


@dataclass(frozen=True)
class Latency:
    """A lognormal delay given by its median and its p99 (seconds); both 0 means no delay."""

    median_s: float
    p99_s: float

    def __post_init__(self) -> None:
        if self.median_s < 0 or self.p99_s < self.median_s:
            raise ValueError(
                f"Latency(median_s={self.median_s}, p99_s={self.p99_s}) is impossible: "
                "need 0 <= median_s <= p99_s"
            )

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds, drawn with ``rng`` so a seeded simulator is reproducible."""
        if self.median_s == 0:
            return 0.0
        sigma = math.log(self.p99_s / self.median_s) / _Z_P99
        return rng.lognormvariate(math.log(self.median_s), sigma)


NO_DELAY = Latency(0.0, 0.0)


@dataclass(frozen=True)
class Profile:
    """Every delay the simulator applies; ``schedule_rate_per_s`` caps bindings per second (None: no cap)."""

    name: str
    get: Latency
    list_base: Latency
    list_per_item_s: float
    write: Latency
    watch_lag: Latency
    schedule: Latency
    schedule_rate_per_s: float | None
    kubelet_start: Latency


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            name="instant",
            get=NO_DELAY,
            list_base=NO_DELAY,
            list_per_item_s=0.0,
            write=NO_DELAY,
            watch_lag=NO_DELAY,
            schedule=NO_DELAY,
            schedule_rate_per_s=None,
            kubelet_start=NO_DELAY,
        ),
        # A healthy cluster: apiserver micro-benchmark medians/tails, the 100 pods/s scheduler threshold of
        # clusterloader2, and pod start well inside the 5 s SLO.
        Profile(
            name="realistic",
            get=Latency(0.0015, 0.015),
            list_base=Latency(0.002, 0.02),
            list_per_item_s=0.000_01,
            write=Latency(0.003, 0.1),
            watch_lag=Latency(0.01, 0.05),
            schedule=Latency(0.02, 0.1),
            schedule_rate_per_s=100.0,
            kubelet_start=Latency(1.5, 5.0),
        ),
        # A cluster at the limits of the published SLOs: p99 1 s for calls, 5 s for lists and pod start.
        Profile(
            name="slo-edge",
            get=Latency(0.05, 1.0),
            list_base=Latency(0.2, 5.0),
            list_per_item_s=0.000_05,
            write=Latency(0.05, 1.0),
            watch_lag=Latency(0.1, 0.5),
            schedule=Latency(0.1, 1.0),
            schedule_rate_per_s=100.0,
            kubelet_start=Latency(2.0, 5.0),
        ),
    )
}

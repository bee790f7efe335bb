"""From per-round step times to the bench's figures: medians over rounds, ratios and costs.

A round's figure is its mean step time (so instruments that fire every N steps are counted);
the reported figure is the median over rounds, with half the range as the ± of a round.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Rounds:
    """Per-round figures of one variant."""

    step_s: list[float] = field(default_factory=list)  # mean step time of each round
    wait_share: list[float] = field(default_factory=list)  # time waiting for data / step time
    peak_mb: float = 0.0
    first_step_s: float | None = None  # the first round's first step: compiling, caches warming
    hook_s: dict[str, list[float]] = field(default_factory=dict)  # callback → each round's s a step

    def add(
        self,
        steps: list[float],
        waits: list[float],
        first_step_s: float | None = None,
        mean_step_s: float | None = None,
    ) -> None:
        """One round: its mean step time is `mean_step_s` (the synchronized window) when given,
        else the mean of `steps`."""
        self.step_s.append(mean_step_s if mean_step_s is not None else statistics.fmean(steps))
        if waits:
            self.wait_share.append(sum(waits) / sum(steps))
        if self.first_step_s is None:
            self.first_step_s = first_step_s

    def images_per_sec(self, batch: int) -> float:
        return batch / statistics.median(self.step_s)

    def spread(self) -> float:
        """Half the range of the per-round figures, relative to their median: the ± of a round."""
        return half_range(self.step_s)


def half_range(values: list[float]) -> float:
    """Half the range of `values`, relative to their median: the ± of one of them."""
    return (max(values) - min(values)) / 2 / statistics.median(values)


def relative_cost(variant_step_s: float, base_step_s: float) -> float:
    """Extra step time of a variant over its base, as a fraction of the base's."""
    return variant_step_s / base_step_s - 1.0


def amortized(every_step_cost: float, every_n_steps: int) -> float:
    """The cost of an instrument that fires every N steps, from its cost when it fires every step."""
    return every_step_cost / every_n_steps if every_n_steps > 0 else 0.0


def data_share(make_us_per_image: float, batch: int, step_s: float) -> float:
    """The share of a step spent making its batch: on a GPU the making is queued with the step's
    other kernels, so the wait for data (a host figure) does not show it."""
    return make_us_per_image * 1e-6 * batch / step_s


def summarize(
    rounds: dict[str, Rounds],
    batch: int,
    frequencies: dict[str, int],
    startup: float | None,
    device: torch.device,
) -> dict[str, Any]:
    """Images/s, ratios and costs from the per-round figures (medians over rounds).
    `frequencies`: how often the every-step instruments fire by default
    (`variants.instrument_frequencies`)."""
    med = {name: statistics.median(r.step_s) for name, r in rounds.items()}
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": batch,
        "rounds": len(rounds["plain"].step_s),
        "images_per_sec": {name: r.images_per_sec(batch) for name, r in rounds.items()},
        "pipeline_over_plain": med["plain"] / med["pipeline"],
        "pipeline_over_naive": med["naive"] / med["pipeline"],
        "data_wait_share": statistics.median(rounds["pipeline"].wait_share),
        "peak_memory_mb": {name: r.peak_mb for name, r in rounds.items()},
        "startup_to_first_step_s": startup,
        "first_step_s": {name: r.first_step_s for name, r in rounds.items()},
        "round_spread": {name: r.spread() for name, r in rounds.items()},
        "per_round_step_s": {name: r.step_s for name, r in rounds.items()},
        "hook_us_per_step": {  # the pipeline's callbacks' per-step hooks (bench/hook_clock.py)
            name: {cb: statistics.median(s) * 1e6 for cb, s in r.hook_s.items()}
            for name, r in rounds.items()
            if r.hook_s
        },
    }
    knobs = [name for name in med if name.startswith("pipeline ")]
    out["knob_effects"] = {name: relative_cost(med[name], med["pipeline"]) for name in knobs}
    if "bare" in med:
        costs = {
            name: relative_cost(med[name], med["bare"]) for name in med if name.startswith("+")
        }
        out["instrument_costs"] = costs
        out["pipeline_over_bare_cost"] = relative_cost(med["pipeline"], med["bare"])
        every_step = {  # name → (the variant at every step, its frequency's key)
            "norms and update ratios": ("+norms and update ratios (every step)", "norms"),
            "histograms": ("+histograms (every step)", "histograms"),
            "analytic check": ("+analytic check (every step)", "check"),
        }
        out["amortized_default_costs"] = {
            name: amortized(costs[variant], frequencies[key])
            for name, (variant, key) in every_step.items()
            if variant in costs
        }
    return out

"""Lightning's model summary, with the FLOPs of a forward pass. Lightning counts them by running
the module's example_input_array, which the pipeline sets only for TensorBoard's graph (one
image): without one its table said FLOPs 0 and "Total FLOPs: 0". Here they are always counted
for one image of the run (data.channels × data.image_size², as that example), on ResNet18 built
on the meta device (resources.forward_flops): shapes only, no memory, ~50 ms. A training step
costs about 3× that per image (forward and backward).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from lightning.pytorch.utilities.model_summary import ModelSummary as LayerSummary

NET = "net"  # ResNetClassifier's network: the summary's one layer at depth 1


class _CountedSummary(LayerSummary):
    """Lightning's summary of the module, with the FLOPs `counted` for one image: all the net's."""

    def __init__(self, model: pl.LightningModule, max_depth: int, counted: int) -> None:
        self._counted = counted
        super().__init__(model, max_depth)

    @property
    def total_flops(self) -> int:
        return self._counted

    @property
    def flop_counts(self) -> dict[str, dict[Any, int]]:
        return {
            name: {"forward": self._counted} if name == NET else {} for name in self.layer_names
        }


class _CountsFlops:
    """`_summary` of a Lightning summary callback, with `flops` (resources.forward_flops)."""

    flops: int
    _max_depth: int

    def _summary(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> LayerSummary:
        return _CountedSummary(pl_module, self._max_depth, self.flops)


class RichSummaryWithFlops(_CountsFlops, RichModelSummary):
    """With the progress bar: Lightning's rich table."""

    def __init__(self, *, flops: int) -> None:
        super().__init__()
        self.flops = flops


class SummaryWithFlops(_CountsFlops, ModelSummary):
    """Without it: Lightning's plain table."""

    def __init__(self, *, flops: int) -> None:
        super().__init__()
        self.flops = flops

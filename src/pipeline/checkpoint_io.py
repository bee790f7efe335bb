"""Checkpoint files that are never half-written: write beside the target, then rename over it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pipeline.errors import ResourceError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save checkpointing, made atomic: a kill mid-write (even SIGKILL) leaves
    the previous file intact, because the new one only replaces it once complete (os.replace)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, target)
        except OSError as exc:  # a full or read-only disk: the previous file is still whole
            kept = "the previous one is unchanged" if target.exists() else "none was saved before"
            raise ResourceError(
                f"cannot write the checkpoint {target} ({exc.strerror or exc}); {kept}; "
                "free space on that disk, or set hydra.run.dir=/a/bigger/disk/run"
            ) from None
        finally:
            partial.unlink(missing_ok=True)

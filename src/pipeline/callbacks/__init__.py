"""Thin Lightning hooks; the math they call lives in pure functions elsewhere in the package."""

from pipeline.callbacks.cuda_flags import CudaFlags
from pipeline.callbacks.gpu_memory import GpuMemory
from pipeline.callbacks.graceful_stop import GracefulStop, graceful_stop_of
from pipeline.callbacks.gradient_check import AnalyticGradientCheck
from pipeline.callbacks.gradient_logger import GradientLogger
from pipeline.callbacks.hydra_files import HydraFilesAtStart
from pipeline.callbacks.noise_scale import GradientNoiseScale
from pipeline.callbacks.nonfinite import NonFiniteGuard
from pipeline.callbacks.progress import ProgressBar
from pipeline.callbacks.provenance import Provenance
from pipeline.callbacks.run_config import RunConfigInCheckpoint
from pipeline.callbacks.run_summary import RunSummary
from pipeline.callbacks.step_grad_norms import StepGradNorms
from pipeline.callbacks.throughput import Throughput
from pipeline.callbacks.timed_checkpoint import TimedCheckpoint

__all__ = [
    "AnalyticGradientCheck",
    "CudaFlags",
    "GpuMemory",
    "GracefulStop",
    "GradientLogger",
    "GradientNoiseScale",
    "HydraFilesAtStart",
    "NonFiniteGuard",
    "ProgressBar",
    "Provenance",
    "RunConfigInCheckpoint",
    "RunSummary",
    "StepGradNorms",
    "Throughput",
    "TimedCheckpoint",
    "graceful_stop_of",
]

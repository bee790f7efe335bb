"""Thin Lightning hooks; the math they call lives in pure functions elsewhere in the package."""

from pipeline.callbacks.cuda_flags import CudaFlags
from pipeline.callbacks.graceful_stop import GracefulStop
from pipeline.callbacks.gradient_check import AnalyticGradientCheck
from pipeline.callbacks.gradient_logger import GradientLogger
from pipeline.callbacks.noise_scale import GradientNoiseScale
from pipeline.callbacks.nonfinite import NonFiniteGuard
from pipeline.callbacks.progress import ProgressBar
from pipeline.callbacks.run_config import RunConfigInCheckpoint
from pipeline.callbacks.run_summary import RunSummary
from pipeline.callbacks.throughput import Throughput

__all__ = [
    "AnalyticGradientCheck",
    "CudaFlags",
    "GracefulStop",
    "GradientLogger",
    "GradientNoiseScale",
    "NonFiniteGuard",
    "ProgressBar",
    "RunConfigInCheckpoint",
    "RunSummary",
    "Throughput",
]

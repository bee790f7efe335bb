"""Every exit code the pipeline's commands end with, and the errors behind them.

0    the command did what it was asked
1    replay: the failing step stayed finite in both precisions (not reproduced);
     gpu-check: a check failed
2    a config problem (validation, or a bad resume=/ckpt_path=); nothing was trained
3    a non-finite loss or gradient stopped the run; the last finite state was saved
4    the analytic gradient check failed (callbacks.gradient_check.on_fail=raise)
5    a process of a DDP run failed, died or timed out; bench.outside_rounds: a process it timed failed
6    the machine ran out: memory for a step, or disk for a checkpoint
128+N  train stopped by signal N (Ctrl-C: 130, SIGTERM: 143) after saving last.ckpt
"""

from __future__ import annotations

import torch

NOT_REPRODUCED_EXIT_CODE = 1  # replay: the step stayed finite
CHECK_FAILED_EXIT_CODE = 1  # gpu-check: a check failed, or it could not start (out folder, install)
CONFIG_ERROR_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 3
GRADIENT_CHECK_EXIT_CODE = 4
PROCESS_FAILED_EXIT_CODE = 5
RESOURCE_EXIT_CODE = 6
SIGNAL_EXIT_BASE = 128  # the shell's convention: 128 + the signal's number


def stopped_by_signal_exit_code(signum: int) -> int:
    """The exit code of a run a signal stopped between steps, as the shell reports a process
    the signal killed."""
    return SIGNAL_EXIT_BASE + signum


class ConfigError(Exception):
    """Every problem found in a config, one line each: key, value, what is allowed, the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DivergenceError(RuntimeError):
    """The loss became non-finite; the message names the step and what to do."""


class GradientCheckError(RuntimeError):
    """Autograd's gradient differs from the closed form; the message names the step, the tensor,
    the max error and the tolerance."""


class ResourceError(RuntimeError):
    """The machine could not give the run what it needed; the message names the setting to change."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text
    )


NO_COMPLETED_TRIAL_EXIT_CODE = 7  # a search's study holds no completed trial to report

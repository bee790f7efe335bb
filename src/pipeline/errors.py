"""How a run ends when it does not train to the end: every exit code, and the errors behind them."""

from __future__ import annotations

CONFIG_ERROR_EXIT_CODE = 2  # validation found problems; nothing was trained
DIVERGED_EXIT_CODE = 3  # a non-finite loss stopped the run; the last finite state was saved


class ConfigError(Exception):
    """Every problem found in a config, one line each: key, value, what is allowed, the fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DivergenceError(RuntimeError):
    """The loss became non-finite; the message names the step and what to do."""


GRADIENT_CHECK_EXIT_CODE = 4  # autograd disagreed with the analytic gradient


class GradientCheckError(RuntimeError):
    """Autograd's gradient differs from the closed form; the message names the step, the tensor,
    the max error and the tolerance."""


PROCESS_FAILED_EXIT_CODE = 5  # a process of a DDP run failed, died or timed out


RESOURCE_EXIT_CODE = 6  # the machine ran out: memory for a step, or disk for a checkpoint


class ResourceError(RuntimeError):
    """The machine could not give the run what it needed; the message names the setting to change."""


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    import torch

    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text
    )


NO_COMPLETED_TRIAL_EXIT_CODE = 7  # a search's study holds no completed trial to report

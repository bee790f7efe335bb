"""Lightning calls every batch hook of every callback on every batch, whether the callback
defines it or inherits Callback's empty one: with the pipeline's dozen callbacks, ~55 calls a
step that do nothing, each ~1.5 µs of Lightning's dispatch here (the hook's lookup, its
profiler label, which for ModelCheckpoint formats its state key, and the call). Lightning skips
a hook that is not callable (trainer/call.py, `_call_callback_hooks`), so a callback's inherited
batch hooks are set to None on the instance; a callback's own hooks, and every hook Lightning
calls once a fit or an epoch, are left as they are.

Likewise Lightning's ModelCheckpoint's on_train_batch_end, which saves every N training steps
or every interval of time: with neither set (the pipeline's last.ckpt, callbacks.checkpoint.
every_n_steps=0: at each epoch's end) it only finds so and returns, ~10 µs a step here with its
dispatch (whose profiler label formats the checkpoint's state key, a repr of its settings).
"""

from __future__ import annotations

from collections.abc import Iterable

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

# Lightning calls these around every training batch, in this order.
TRAIN_BATCH_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)
BATCH_HOOKS = (
    *TRAIN_BATCH_HOOKS,
    "on_validation_batch_start",
    "on_validation_batch_end",
    "on_test_batch_start",
    "on_test_batch_end",
    "on_predict_batch_start",
    "on_predict_batch_end",
)


def inherited_batch_hooks(callback: Callback) -> list[str]:
    """The batch hooks `callback` takes from Callback unchanged (neither its class nor the
    instance defines them)."""
    return [
        hook
        for hook in BATCH_HOOKS
        if getattr(type(callback), hook) is getattr(Callback, hook) and hook not in vars(callback)
    ]


def idle_batch_hooks(callback: Callback) -> list[str]:
    """The batch hooks of `callback` that do nothing on a training batch: those it inherits, and a
    ModelCheckpoint's on_train_batch_end when it saves neither by steps nor by time."""
    idle = inherited_batch_hooks(callback)
    if (
        isinstance(callback, ModelCheckpoint)
        and callback._every_n_train_steps < 1
        and callback._train_time_interval is None
    ):
        idle.append("on_train_batch_end")
    return idle


def skip_idle_batch_hooks(callbacks: Iterable[Callback]) -> None:
    """Make Lightning skip each callback's batch hooks that do nothing (the module's docstring)."""
    for callback in callbacks:
        for hook in idle_batch_hooks(callback):
            setattr(callback, hook, None)

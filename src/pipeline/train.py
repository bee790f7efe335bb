"""`python -m pipeline.train`: compose → validate → build → fit. Read it top to bottom.

Writes the run directory outputs/YYYY-MM-DD/HH-MM-SS/ (.hydra/, train.log, tensorboard/,
checkpoints/last.ckpt) and prints where it is at the end.
"""

from __future__ import annotations

# Before the imports below: a stop signal in the seconds torch and Lightning take is recorded too.
if __name__ == "__main__":  # python -m pipeline.train
    from pipeline import early_signals as _early
    from pipeline.launch_rank import refuse_unreadable_rank as _refuse

    _refuse("pipeline.train")  # a rank Lightning's import would end on
    _early.install(importing=True)

import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch.multiprocessing.spawn import ProcessRaisedException

from pipeline import build, cli, early_signals, report
from pipeline.callbacks import HydraFilesAtStart, Provenance, graceful_stop_of
from pipeline.checkpoints import read_checkpoint, resume_changes, run_config_of
from pipeline.config import validate, warnings_for
from pipeline.config_dir import CONFIG_DIR
from pipeline.errors import (
    CONFIG_ERROR_EXIT_CODE,
    DIVERGED_EXIT_CODE,
    GRADIENT_CHECK_EXIT_CODE,
    PROCESS_FAILED_EXIT_CODE,
    RESOURCE_EXIT_CODE,
    ConfigError,
    DivergenceError,
    GradientCheckError,
    ResourceError,
    is_out_of_memory,
    stopped_by_signal_exit_code,
)
from pipeline.launch_rank import is_launch_rank_zero
from pipeline.layout import HYDRA_DIR, LAST_CHECKPOINT
from pipeline.loggers import mark_stopped
from pipeline.overrides import shell_word
from pipeline.provenance import provenance
from pipeline.rundir import discard_run_dir, forget_created, untrained_made_here

log = logging.getLogger(__name__)
report.silence_known_warnings()


# A sweep's jobs that ended with an exit code of their own (diverged, failed a check, out of
# memory): (the job's run directory, the code); the sweep goes on to its other jobs. And how
# many jobs started, and the sweep's folder.
_failed_jobs: list[tuple[Path, int]] = []
_sweep: dict[str, Any] = {"jobs": 0, "dir": None}


@hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")
def train(cfg: DictConfig) -> None:
    """One run of a config that cli.preflight has validated (main() always runs it first). In a
    sweep, a job that fails is recorded and the next one runs, as Hydra treats a job's
    exception; a job's sys.exit ended the whole sweep, the jobs after it never run (hostile
    review: `-m optimizer.lr=1e-5,0.1,1e-4`, the 0.1 diverged and 1e-4 never ran). A signal's
    stop still ends the sweep."""
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        run(cfg)
        return
    _sweep["jobs"] += 1
    _sweep["dir"] = Path(HydraConfig.get().sweep.dir).absolute()
    try:
        run(cfg)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        if code == 0 or code >= 128:
            raise
        _failed_jobs.append((Path(HydraConfig.get().runtime.output_dir), code))
    except Exception:  # a bug's traceback: Hydra's, once the other jobs have run; named too
        _failed_jobs.append((Path(HydraConfig.get().runtime.output_dir), 1))
        raise


# What a spawned rank's error, raised again in the parent as text, means: its exit code.
SPAWNED_ERRORS = {
    DivergenceError.__name__: DIVERGED_EXIT_CODE,
    GradientCheckError.__name__: GRADIENT_CHECK_EXIT_CODE,
    ResourceError.__name__: RESOURCE_EXIT_CODE,
}


def spawned_rank_failure(text: str) -> tuple[int, str]:
    """(exit code, line) for a rank Lightning spawned that failed (`text`: torch's
    ProcessRaisedException, the rank's traceback as text). A DDP job of a sweep runs its ranks
    so: its divergence was an 80-line traceback and exit 1 where a single run says one line."""
    lines = text.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        name, _, message = lines[i].partition(": ")
        error = name.removeprefix("pipeline.errors.")
        if error != name and error in SPAWNED_ERRORS:
            return SPAWNED_ERRORS[error], " ".join([message, *lines[i + 1 :]]).strip()
    last = lines[-1] if lines else "no error text"
    return PROCESS_FAILED_EXIT_CODE, f"a process of this DDP run failed: {last[:300]}"


def failed_jobs_line(failed: list[tuple[Path, int]], jobs: int, sweep_dir: Path | None) -> str:
    """The sweep's closing line when some of its jobs failed (each said why above)."""

    def shown(job_dir: Path) -> str:
        if sweep_dir is not None and job_dir.is_relative_to(sweep_dir):
            return str(job_dir.relative_to(sweep_dir))
        return str(job_dir)

    named = "; ".join(f"{shown(d)} (exit {code})" for d, code in failed)
    where = f" in {sweep_dir}" if sweep_dir is not None else ""
    return f"{len(failed)} of the {jobs} job(s) the sweep ran failed, each named above with its reason{where}: {named}"


def run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> None:
    """The body of `train`, inside Hydra's job (its run directory and logging); pipeline.search
    runs each trial through it with its pruning callback in `extra_callbacks`. Ends with
    sys.exit(code) when the run does not train to the end."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    report.route_lightning_logs_to_hydra()
    report.show_config(cfg)
    for note in warnings_for(cfg):
        log.warning(note)
    if cfg.ckpt_path is not None and is_launch_rank_zero():  # checked in the pre-flight
        ckpt = read_checkpoint(str(cfg.ckpt_path), mmap=True)  # its config: no weights read
        saved = run_config_of(ckpt, str(cfg.ckpt_path))
        if changes := resume_changes(saved, cfg):
            log.warning(
                "continuing from %s with %s: the curves after its step are of another setting",
                cfg.ckpt_path, ", ".join(changes),
            )  # fmt: skip
    trainer: pl.Trainer | None = None
    early_signals.rearm()  # a sweep's next job: a stop signal before it trains stops the sweep
    try:
        stop_if_signalled(run_dir)
        pl.seed_everything(cfg.seed, workers=True, verbose=False)
        datamodule = build.build_datamodule(cfg)
        module = build.build_module(cfg)
        stop_if_signalled(run_dir)  # later, GracefulStop takes it: a stop after the first step
        in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
        trainer = build.build_trainer(
            cfg,
            run_dir,
            extra_callbacks=[
                *deferred_hydra_files(cfg, run_dir),
                Provenance(run_dir=run_dir, info=provenance(cli.command_line(), Path.cwd())),
                *extra_callbacks,
            ],
            in_sweep=in_sweep,
            overrides=list(HydraConfig.get().overrides.task),
        )
        accumulate = trainer.accumulate_grad_batches
        report.show_line(
            f"Training ResNet18: {cfg.trainer.max_steps} steps, global batch "
            f"{trainer.world_size * cfg.data.batch_size * accumulate} ({trainer.world_size} "
            f"process(es) × data.batch_size={cfg.data.batch_size}"
            + (f" × trainer.accumulate_grad_batches={accumulate}" if accumulate > 1 else "")
            + f"), {cfg.data.image_size}×{cfg.data.image_size}, "
            f"loss={cfg.loss.name}, precision={cfg.precision}"
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
        stopped = graceful_stop_of(trainer)
    except ConfigError as exc:
        cli.report_problems(exc.problems, "pipeline.train")
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    except KeyboardInterrupt:  # a second Ctrl-C before fit (early_signals)
        if not early_signals.forced():
            raise
        stop_before_training(run_dir, signal.SIGINT, forced=True)
    except SystemExit:  # Lightning's exit(1) after a KeyboardInterrupt: a second Ctrl-C's?
        if early_signals.forced() and early_signals.after_training():  # in Lightning's teardown
            stop_as_it_ended(run_dir)
        if early_signals.forced():  # during Lightning's setup, before training
            stop_before_training(run_dir, signal.SIGINT, forced=True)
        forced = graceful_stop_of(trainer) if trainer is not None else None
        if forced is None or not forced.forced:
            raise
        message = forced_stop_message(run_dir, forced.stopped_at_step)
        report.log_to_file(message, with_traceback=False)
        if is_launch_rank_zero():
            report.show_error("pipeline.train", message)
        sys.exit(stopped_by_signal_exit_code(signal.SIGINT))
    except (DivergenceError, GradientCheckError) as exc:
        report.log_to_file(str(exc), with_traceback=False)
        # Under DDP every rank stops at the same step (the flag is reduced over them), each with
        # its own loss in the message: rank 0's is the one divergence.json holds.
        if is_launch_rank_zero() or not isinstance(exc, DivergenceError):
            report.show_error("pipeline.train", str(exc))
        sys.exit(
            DIVERGED_EXIT_CODE if isinstance(exc, DivergenceError) else GRADIENT_CHECK_EXIT_CODE
        )
    except ResourceError as exc:
        report.log_to_file("the run ran out of disk")
        report.show_error("pipeline.train", str(exc))
        sys.exit(RESOURCE_EXIT_CODE)
    except ProcessRaisedException as exc:  # a rank Lightning spawned (a sweep's DDP job)
        code, message = spawned_rank_failure(str(exc))
        report.log_to_file(message, with_traceback=False)
        report.show_error("pipeline.train", message)
        sys.exit(code)
    except (RuntimeError, MemoryError) as exc:
        if is_out_of_memory(exc):
            report.log_to_file("a training step ran out of memory")
            report.show_error("pipeline.train", out_of_memory_message(cfg))
            sys.exit(RESOURCE_EXIT_CODE)
        if cfg.device.strategy != "ddp":
            raise
        report.log_to_file("a process of the DDP run failed")
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        report.show_error(
            "pipeline.train", f"a process of this DDP run failed, died or timed out: {first}"
        )
        sys.exit(PROCESS_FAILED_EXIT_CODE)
    if stopped is not None and stopped.received is None:  # after the fit's end (re-armed)
        stopped.received = early_signals.received()
        early_signals.mark_reported()  # said below; kept: a sweep's next job stops on it
    if stopped is not None and stopped.received is not None:
        name = signal.Signals(stopped.received).name
        if stopped.stopped_at_step is None:
            if is_launch_rank_zero():  # once a run, not once a process
                log.warning(
                    "%s arrived too late to stop the run before its end: it stopped nothing, "
                    "the run is complete",
                    name,
                )
        else:
            message = (
                f"{stopped_line(name, stopped.stopped_at_step, run_dir)}{continue_hint(run_dir)}"
            )
            report.log_to_file(message, with_traceback=False)
            if is_launch_rank_zero():  # every rank stops and exits so; one says it
                if trainer is not None:
                    mark_stopped(trainer.loggers)
                report.show_error("pipeline.train", message)
            sys.exit(stopped_by_signal_exit_code(stopped.received))
    report.show_run_dir(run_dir, tensorboard="tensorboard" in (cfg.logger or {}))


def stop_as_it_ended(run_dir: Path) -> NoReturn:
    """A second Ctrl-C after the run's last step, in Lightning's teardown: one line, exit 130."""
    cut = "stopped at once by a second Ctrl-C as the run was ending"
    message = forced_stop_message(run_dir, None, cut=cut, resume=False)  # it trained to its end
    report.log_to_file(message, with_traceback=False)
    if is_launch_rank_zero():
        report.show_error("pipeline.train", message)
    sys.exit(stopped_by_signal_exit_code(signal.SIGINT))


def stop_if_signalled(run_dir: Path) -> None:
    """A stop signal since the command started (early_signals): stop before training. On a rank
    Lightning or torchrun started, the run's GracefulStop takes it, and every rank stops at the
    same step (a rank that left alone would leave the others waiting for it, then killed)."""
    if is_launch_rank_zero() and (signum := early_signals.received()) is not None:
        stop_before_training(run_dir, signum, forced=False)


def stop_before_training(run_dir: Path, signum: int, *, forced: bool) -> NoReturn:
    """One line, and the exit of a stop by `signum`; a run directory this command made, holding
    nothing trained, is removed (nothing half-written is left), any other is left as it was."""
    how = (
        "stopped at once by a second Ctrl-C"
        if forced
        else f"stopped by {signal.Signals(signum).name}"
    )
    if is_launch_rank_zero() and run_dir.resolve() in untrained_made_here():
        discard_run_dir(run_dir)
        message = f"{how} before training started; nothing was trained, and {run_dir} is removed"
    else:
        message = f"{how} before training started; nothing was trained{continue_hint(run_dir)}"
        report.log_to_file(message, with_traceback=False)
    if is_launch_rank_zero():
        report.show_error("pipeline.train", message)
    sys.exit(stopped_by_signal_exit_code(signum))


def deferred_hydra_files(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    """A resume told Hydra not to rewrite `.hydra/` (cli.py): write it once training starts."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.output_subdir is not None or not is_launch_rank_zero():
        return []
    files = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
        "overrides.yaml": OmegaConf.to_yaml(list(hydra_cfg.overrides.task)),
    }
    return [HydraFilesAtStart(directory=run_dir / HYDRA_DIR, files=files)]


def stopped_line(signal_name: str, step: int, run_dir: Path) -> str:
    """What a signal's stop between steps left (GracefulStop saved last.ckpt at `step`)."""
    return f"stopped by {signal_name} after step {step}; saved {run_dir / LAST_CHECKPOINT}"


_HINTS = {"resume": True}  # off while pipeline.search runs a trial (without_resume_hint)


def continue_hint(run_dir: Path) -> str:
    """How to continue a stopped run: its resume= command; nothing for a search's trial, whose
    search continues by running its own command again (it said so too: two ways, one a resume
    of a trial the study keeps as it was)."""
    if not _HINTS["resume"]:
        return ""
    return f"; continue with: python -m pipeline.train {shell_word(f'resume={run_dir}')}"


@contextmanager
def without_resume_hint() -> Iterator[None]:
    """pipeline.search's trials: their stop lines name no resume= (continue_hint)."""
    _HINTS["resume"] = False
    try:
        yield
    finally:
        _HINTS["resume"] = True


def forced_stop_message(
    run_dir: Path,
    stopped_at_step: int | None,
    cut: str = "stopped at once by a second Ctrl-C, mid-step, saving nothing",
    resume: bool = True,
) -> str:
    """What a second Ctrl-C left: the first one's save, if it was done (`stopped_at_step`), else
    whatever last.ckpt holds from before (its step read from the file); `cut`: where it came."""
    if stopped_at_step is not None:
        return (
            f"{stopped_line('SIGINT', stopped_at_step, run_dir)}; a second Ctrl-C cut the run's "
            f"end short{continue_hint(run_dir)}"
        )
    checkpoint = run_dir / LAST_CHECKPOINT
    try:
        step = read_checkpoint(str(checkpoint))["global_step"]
    except ConfigError:  # none, or not one of ours: nothing to resume from
        return f"{cut}; no checkpoint was saved"
    return f"{cut}; {checkpoint} holds step {step}" + (continue_hint(run_dir) if resume else "")


def out_of_memory_message(cfg: DictConfig) -> str:
    where = "the GPU" if build.uses_cuda(cfg) else "this machine"
    return (
        f"a training step ran out of memory on {where} at data.batch_size={cfg.data.batch_size}, "
        f"data.image_size={cfg.data.image_size}, precision={cfg.precision}; lower data.batch_size "
        "or data.image_size (the traceback is in train.log)"
    )


def main() -> None:
    """Console entry point `pipeline-train`."""
    early_signals.install()
    early_signals.imported()
    try:
        signum = early_signals.received() if is_launch_rank_zero() else None  # other ranks: below
        if signum is not None:  # during the imports
            name = signal.Signals(signum).name
            report.show_error("pipeline.train", f"stopped by {name} before training started")
            sys.exit(stopped_by_signal_exit_code(signum))
        _failed_jobs.clear()
        _sweep.update(jobs=0, dir=None)
        try:
            cli.run(train, "train", "pipeline.train", validate)
        finally:  # also when a later job's signal or exception ends the sweep
            if _failed_jobs and is_launch_rank_zero():
                report.show_error(
                    "pipeline.train", failed_jobs_line(_failed_jobs, _sweep["jobs"], _sweep["dir"])
                )
        if (late := early_signals.unreported()) is not None and is_launch_rank_zero():
            name = signal.Signals(late).name
            report.show_line(
                f"{name} arrived as the run ended: it stopped nothing; the run is complete"
            )
        if _failed_jobs:
            sys.exit(_failed_jobs[0][1])  # the first failed job's code
    except KeyboardInterrupt:  # a second Ctrl-C outside run()'s try: before or around Hydra's job
        if not early_signals.forced():
            raise
        if early_signals.after_training():  # the run's own files are written
            report.show_error(
                "pipeline.train", "stopped at once by a second Ctrl-C as the run ended"
            )
            sys.exit(stopped_by_signal_exit_code(signal.SIGINT))
        removed = untrained_made_here()
        for run_dir in removed:  # nothing trained in it
            discard_run_dir(run_dir)
        report.show_error(
            "pipeline.train",
            "stopped at once by a second Ctrl-C" + "".join(f"; {d} is removed" for d in removed),
        )
        sys.exit(stopped_by_signal_exit_code(signal.SIGINT))
    finally:
        early_signals.uninstall()
        forget_created()  # a later command in this process (a notebook's) removes none of these


if __name__ == "__main__":
    main()

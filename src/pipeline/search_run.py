"""Running a validated search: each trial a pipeline.train run in this process, then the best.

A trial draws its point of the space, claims outputs/search/<study>/trial-NNNN/, and runs
pipeline.train's own path (pre-flight, Hydra's job, the Trainer) with the TrialReports callback
added; its exit code and the callback's record decide what Optuna stores: the metric's final
value, pruned, or failed with an `outcome` user attribute (diverged, failed its gradient check,
…). Each trial also records its run directory and its pipeline.train command, shown by
optuna-dashboard.
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning.pytorch as pl
import optuna
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from pipeline import cli, early_signals, report
from pipeline.callbacks.trial_reports import TrialReports
from pipeline.config import validate
from pipeline.config_dir import CONFIG_DIR
from pipeline.errors import (
    CONFIG_ERROR_EXIT_CODE,
    DIVERGED_EXIT_CODE,
    GRADIENT_CHECK_EXIT_CODE,
    NO_COMPLETED_TRIAL_EXIT_CODE,
    RESOURCE_EXIT_CODE,
    stopped_by_signal_exit_code,
)
from pipeline.layout import OUTPUTS, SEARCH_TRIALS
from pipeline.overrides import override, shell_word
from pipeline.rundir import claim_run_dir, release_run_dir
from pipeline.search_space import Plan, as_overrides, suggest
from pipeline.search_study import (
    OUTCOME_ATTR,
    WORKER_ATTR,
    StudyLock,
    counted,
    fail_dead_trials,
    open_storage,
    sqlite_path,
    study_exists,
    taken_slots,
    worker_id,
)

TRIALS_DIR = Path(OUTPUTS) / SEARCH_TRIALS  # outputs/search/<study>/trial-NNNN/
OUTCOMES = {  # a trial's exit code → how it failed
    DIVERGED_EXIT_CODE: "diverged",
    GRADIENT_CHECK_EXIT_CODE: "failed its gradient check",
    RESOURCE_EXIT_CODE: "ran out of memory or disk",
    CONFIG_ERROR_EXIT_CODE: "had a config problem",
}


class TrialFailed(Exception):
    """A trial ended without a value; Optuna records it as failed and the search goes on."""


class SearchStopped(Exception):
    """A signal stopped the trial in flight, or came between trials: the search stops too,
    with the trial's exit code (or the signal's)."""

    def __init__(self, code: int, where: str = "during a trial") -> None:
        super().__init__(f"exit code {code}")
        self.code = code
        self.where = where


def open_study(plan: Plan) -> tuple[optuna.Study | None, list[str]]:
    """The plan's study, created if new: (study, problems). An existing study must have been
    run with the same metric, direction, space and fixed overrides. Under the StudyLock: two
    commands that create one SQLite database at once collide in Optuna's table setup."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this command's own lines say what happened
    lock = StudyLock(sqlite_path(plan.storage))
    try:
        lock.acquire()
        return load_or_create(plan, open_storage(plan.storage))
    except (OSError, ImportError, SQLAlchemyError) as exc:
        reason = next((s.strip() for s in str(exc).splitlines() if s.strip()), type(exc).__name__)
        return None, [
            f"cannot open search.storage={plan.storage} ({reason}); "
            "set search.storage=sqlite:///a/writable/path.db"
        ]
    finally:
        lock.release()


def load_or_create(
    plan: Plan, storage: optuna.storages.RDBStorage
) -> tuple[optuna.Study | None, list[str]]:
    """The plan's study in `storage`, checked against its record if it exists: (study, problems)."""
    sampler = (
        optuna.samplers.TPESampler() if plan.sampler == "tpe" else optuna.samplers.RandomSampler()
    )
    pruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=plan.pruner["n_startup_trials"],
            n_warmup_steps=plan.pruner["n_warmup_steps"],
        )
        if plan.pruner["name"] == "median"
        else optuna.pruners.NopPruner()
    )
    existed = study_exists(storage, plan.study)
    study = optuna.create_study(
        storage=storage,
        study_name=plan.study,
        sampler=sampler,
        pruner=pruner,
        direction=plan.direction,
        load_if_exists=True,
    )
    if existed:  # Optuna keeps the study's first direction whatever create_study is given
        record = plan.record() | {"direction": plan.direction}
        kept = (study.user_attrs or plan.record()) | {"direction": study.direction.name.lower()}
        differ = [k for k, v in record.items() if kept.get(k) != v]
        if differ:
            return None, [
                f"study {plan.study} in {plan.storage} was searched with another "
                f"{', '.join(differ)} ({'; '.join(f'{k}: {kept.get(k)}' for k in differ)}); "
                f"run that command again, or start a new study: search.study={plan.study}_2"
            ]
    for key, value in plan.record().items():
        study.set_user_attr(key, value)
    return study, []


def run_train(overrides: list[str], extra_callbacks: Sequence[pl.Callback]) -> int:
    """`python -m pipeline.train <overrides>` in this process, with `extra_callbacks`: its exit
    code. The command's own path (cli.run: pre-flight, run directory, Hydra's job and logging);
    sys.argv[0] names train.py, so the run's provenance records a pipeline.train command."""
    from pipeline import train

    app = hydra.main(config_path=str(CONFIG_DIR), config_name="train", version_base="1.3")(
        lambda cfg: train.run(cfg, extra_callbacks)
    )
    argv = sys.argv
    sys.argv = [train.__file__, *overrides]
    try:
        with train.without_resume_hint():
            cli.run(app, "train", "pipeline.train", validate)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    return 0


def objective(trial: optuna.Trial, plan: Plan, lock: StudyLock) -> float:
    """One trial: the metric's final value, or TrialPruned / TrialFailed / SearchStopped."""
    trial.set_user_attr(WORKER_ATTR, worker_id())
    lock.release()  # this trial now holds its slot
    values = suggest(plan.space, trial)
    run_dir = claim_run_dir(TRIALS_DIR / plan.study / f"trial-{trial.number:04d}")
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("command", plan.train_command(values))
    print(f"trial {trial.number}: {' '.join(as_overrides(values))}")
    reports = TrialReports(trial=trial, metric=plan.metric)
    overrides = [*plan.train_overrides(values), override("hydra.run.dir", run_dir)]
    try:
        code = run_train(overrides, [reports])
    finally:
        release_run_dir(run_dir)
    return trial_value(trial, code, reports)


def trial_value(trial: optuna.Trial, code: int, reports: TrialReports) -> float:
    """What a finished pipeline.train run gives the study."""
    if code >= 128:  # a signal: interrupted, not finished (its slot is freed)
        raise SearchStopped(code)
    outcome, value = "complete", reports.final_value
    if code != 0:
        outcome = OUTCOMES.get(code, f"failed with exit code {code} (see its train.log)")
    elif reports.pruned_at_step is not None:
        outcome = f"pruned at step {reports.pruned_at_step}"
    elif value is None or not math.isfinite(value):
        outcome = f"ended with {reports.metric}={value}"
    trial.set_user_attr(OUTCOME_ATTR, outcome)
    shown = f"{reports.metric}={value:.6g}" if outcome == "complete" and value is not None else ""
    print(f"trial {trial.number}: {outcome} {shown}".rstrip(), flush=True)
    if outcome.startswith("pruned"):
        raise optuna.TrialPruned(outcome)
    if outcome != "complete" or value is None:
        raise TrialFailed(outcome)
    return value


def run_trials(study: optuna.Study, plan: Plan) -> None:
    """Trials one after another until the study's finished and running trials reach n_trials."""
    lock = StudyLock(sqlite_path(plan.storage))
    while True:
        lock.acquire()
        try:
            for number in fail_dead_trials(study):
                print(
                    f"trial {number}: its process is gone; marked failed, not counted", flush=True
                )
            if taken_slots(study) >= plan.n_trials:
                return  # done: a signal after the last trial stopped nothing
            if (signum := early_signals.received()) is not None:  # after a trial's end: not
                # the next trial's start, config and pre-flight, to stop it there (review)
                raise SearchStopped(stopped_by_signal_exit_code(signum), "between trials")
            study.optimize(
                lambda trial: objective(trial, plan, lock), n_trials=1, catch=(TrialFailed,)
            )
        finally:
            lock.release()


def show_result(study: optuna.Study, plan: Plan) -> int:
    """Print the study's tally, its best value and the command that reproduces it: exit code."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials if counted(t))
    print(
        f"study {plan.study}: {sum(states.values())} of {plan.n_trials} trials finished "
        f"({states[TrialState.COMPLETE]} complete, {states[TrialState.PRUNED]} pruned, "
        f"{states[TrialState.FAIL]} failed); dashboard: optuna-dashboard {shell_word(plan.storage)}"
    )
    if not states[TrialState.COMPLETE]:
        report.show_error(
            "pipeline.search",
            f"no trial of study {plan.study} completed; each trial's train.log is in {TRIALS_DIR / plan.study}",
        )
        return NO_COMPLETED_TRIAL_EXIT_CODE
    best = study.best_trial
    values = {p.key: best.params[p.key] for p in plan.space}
    print(
        f"best {plan.metric}: {best.value:.6g} (trial {best.number}, {best.user_attrs.get('run_dir')})"
    )
    print(f"reproduce it: {plan.train_command(values)}")
    if any((TRIALS_DIR / plan.study).glob("*/tensorboard")):  # not under logger=none or csv
        print(
            f"compare the trials: tensorboard --logdir {shell_word(str(TRIALS_DIR / plan.study))} (HParams tab)"
        )
    return 0

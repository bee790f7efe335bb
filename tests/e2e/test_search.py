"""pipeline.search: an Optuna study in SQLite, each trial a pipeline.train run in the search's process.

Real processes only where a process is the point (killed and continued; two at once); the
divergence, pruning and reproduction tests call the command's main() in this process, which
runs the same trials (a process start costs ~9 s of imports here).
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from helpers import TINY, run_cli, scalars, start_cli
from pipeline.config_dir import group_options
from pipeline.search import make_plan
from pipeline.search_run import open_study, show_result
from pipeline.search_space import Plan, corners, parse_space
from pipeline.search_study import StudyLock, counted

# Two validations a trial (steps 2 and 4) where pruning is tested; one elsewhere.
SMALL = [*TINY, "loss=mse", "callbacks=minimal"]


def study_at(root: Path, name: str) -> optuna.Study:
    """The study, opened under the searches' own lock: a reader that opens the database while a
    search creates it races on Optuna's table setup (UNIQUE constraint on alembic_version)."""
    db = root / "outputs" / "search" / f"{name}.db"
    lock = StudyLock(db)
    lock.acquire()
    try:
        return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    finally:
        lock.release()


def completed(root: Path, name: str) -> int:
    """Complete trials of the study so far; 0 before the search has created it."""
    if not (root / "outputs" / "search" / f"{name}.db").exists():
        return 0
    try:
        return tally(study_at(root, name))["complete"]
    except KeyError:  # the database is there, the study not yet
        return 0


def tally(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {
        "counted": sum(counted(t) for t in trials),
        **{s.name.lower(): sum(t.state == s for t in trials) for s in TrialState},
    }


def search_in_process(args: list[str], root: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """`python -m pipeline.search <args>` run by this process in `root`: its exit code."""
    from pipeline import search

    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", ["search.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        search.main()
    code = exit_info.value.code
    return code if isinstance(code, int) else int(code is not None)


@pytest.mark.parametrize("space", group_options("search"))
def test_every_shipped_space_validates_at_its_edges(space: str) -> None:
    plan, problems = make_plan([f"search={space}", *SMALL])
    assert problems == []
    assert plan is not None and plan.space


def test_bad_inputs_are_one_line_each_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "search.n_trials=0",
        "search.direction=down",
        "search.metric=val/acc",
        "hydra.run.dir=x",
        "optimizer.lr=interval(1e-2,1e-4)",
    ]
    assert search_in_process(args, tmp_path, monkeypatch) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "pipeline.search: 5 config problems:",
        "  - hydra.run.dir=x: pipeline.search takes no hydra.run.dir= (each trial's run directory is outputs/search/<study>/trial-NNNN); drop it",
        "  - optimizer.lr: interval(0.01, 0.0001) needs low < high; swap or widen it",
        "  - search.metric must be one of val/loss, train/loss (got 'val/acc'); set search.metric=val/loss",
        "  - search.direction must be one of minimize, maximize (got 'down'); set search.direction=minimize",
        "  - search.n_trials must be ≥ 1 (got 0); set search.n_trials=20",
    ]
    assert list(tmp_path.iterdir()) == []
    for name in (".", ".."):  # outputs/search/.. put the trials in outputs/ (hostile review)
        assert search_in_process([f"search.study={name}"], tmp_path, monkeypatch) == 2
        assert capsys.readouterr().err.startswith(
            f"pipeline.search: 1 config problem:\n  - search.study must be a name of letters, "
            f"digits, _ . - (not . or ..: a folder's own names) (got '{name}')"
        )
    assert list(tmp_path.iterdir()) == []


def test_a_space_invalid_at_one_edge_is_refused_before_any_trial() -> None:
    # Adam has no momentum: the space is invalid wherever optimizer=adam.
    _, problems = make_plan(
        [*SMALL, "optimizer=choice(sgd,adam)", "optimizer.momentum=interval(0,0.9)"]
    )
    assert problems and all(p.startswith("at optimizer=adam ") for p in problems), problems
    assert "optimizer.momentum is not a key of the chosen optimizer" in problems[0], problems
    assert "Could not override" not in problems[0]  # Hydra's, with its `+` advice
    # A bad value at the space's first edge names that edge too, as every other edge's does.
    _, problems = make_plan([*SMALL, "model.num_classes=choice(0,10)"])
    (problem,) = problems
    edge, message = problem.split(": ", 1)
    assert edge.startswith("at ") and "model.num_classes=0" in edge.split(), problem
    assert message == "model.num_classes must be ≥ 1 (got 0); set model.num_classes=1000"


def test_killed_search_continues_to_n_trials_and_names_the_best_command(
    tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["search.study=resume", "search.n_trials=4", *SMALL]
    first = start_cli("pipeline.search", args, tmp_path, torch_home)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and first.poll() is None:
            if completed(tmp_path, "resume") >= 2:
                break
            time.sleep(0.5)
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: no handler runs
        first.wait()
    assert tally(study_at(tmp_path, "resume"))["complete"] == 2

    again = run_cli("pipeline.search", args, tmp_path, torch_home)
    assert again.returncode == 0, again.stderr[-3000:]
    counts = tally(study_at(tmp_path, "resume"))
    assert (counts["counted"], counts["complete"], counts["running"]) == (4, 4, 0), counts
    best = study_at(tmp_path, "resume").best_trial
    assert f"best val/loss: {best.value:.6g} (trial {best.number}," in again.stdout
    run_dirs = sorted((tmp_path / "outputs" / "search" / "resume").iterdir())
    assert len(run_dirs) >= 4
    assert all((d / "tensorboard").is_dir() for d in run_dirs if (d / "checkpoints").exists())

    # The printed command reproduces the best trial's value, through pipeline.train's main().
    (command,) = [ln for ln in again.stdout.splitlines() if ln.startswith("reproduce it: ")]
    words = shlex.split(command.removeprefix("reproduce it: "))
    assert words[:3] == ["python", "-m", "pipeline.train"]
    from pipeline import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(sys, "argv", ["train.py", *words[3:], "hydra.run.dir=outputs/again"])
    train.main()
    _, val_loss = scalars(tmp_path / "outputs" / "again" / "tensorboard")["val/loss"][-1]
    assert val_loss == pytest.approx(best.value, rel=1e-5)


def test_a_sigterm_as_a_trial_sets_up_stops_the_search_with_its_line_and_frees_the_slot(
    tmp_path: Path, torch_home: Path
) -> None:
    """Before a trial's GracefulStop listened, a SIGTERM killed the search silently (the trial
    left RUNNING in the study), and a Ctrl-C was Lightning's exit 1: the trial recorded as
    failed, counted, and the search went on to exit 0 (hostile review). Now the trial stops as
    pipeline.train stops, naming no resume= of the trial, and the search says how to go on."""
    args = ["search.study=stop", "search.n_trials=2", *SMALL]
    proc = start_cli("pipeline.search", args, tmp_path, torch_home)
    log = tmp_path / "outputs" / "search" / "stop" / "trial-0000" / "train.log"
    deadline = time.monotonic() + 120
    while not log.exists():  # the trial's Hydra job has started: it builds, then sets up
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "pipeline.search: stopped (exit code 143) during a trial; run the same command " in err
    assert "resume=" not in err and "Traceback" not in err
    counts = tally(study_at(tmp_path, "stop"))
    assert (counts["counted"], counts["running"]) == (0, 0), counts


def test_the_tensorboard_line_is_printed_only_where_the_trials_wrote_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under logger=none (or csv) the search ended by naming a TensorBoard over no event files."""
    monkeypatch.chdir(tmp_path)
    plan, problems = make_plan(["search.study=tip", "search.n_trials=1", *SMALL])
    assert plan is not None, problems
    study, problems = open_study(plan)
    assert study is not None, problems
    trial = study.ask()
    for p in plan.space:
        p.suggest(trial)
    study.tell(trial, 1.0)
    assert show_result(study, plan) == 0
    assert "compare the trials" not in capsys.readouterr().out
    (tmp_path / "outputs" / "search" / "tip" / "trial-0000" / "tensorboard").mkdir(parents=True)
    assert show_result(study, plan) == 0
    assert "compare the trials: tensorboard --logdir outputs/search/tip (HParams tab)" in (
        capsys.readouterr().out
    )


def test_two_processes_share_one_study(tmp_path: Path, torch_home: Path) -> None:
    args = ["search.study=shared", "search.n_trials=3", *SMALL]
    both = [start_cli("pipeline.search", args, tmp_path, torch_home) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in both]
    assert [p.returncode for p in both] == [0, 0], [err[-2000:] for _, err in outputs]
    study = study_at(tmp_path, "shared")
    counts = tally(study)
    assert (counts["counted"], counts["complete"]) == (3, 3), counts
    workers = {t.user_attrs["worker"] for t in study.get_trials(deepcopy=False)}
    assert len(workers) == 2  # each process ran at least one of the three


def test_a_diverging_trial_is_failed_and_the_search_goes_on(
    tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    # The seed's loss has no minimum; at lr 1e38 the first update overflows.
    args = [
        "search.study=diverge",
        "search.n_trials=2",
        *TINY,
        "callbacks=minimal",
        "loss=sum_diff",
        "optimizer=choice(sgd)",
        "optimizer.lr=choice(1e38)",
    ]
    assert search_in_process(args, tmp_path, monkeypatch) == 7  # no trial completed
    trials = study_at(tmp_path, "diverge").get_trials()
    assert [(t.state, t.user_attrs["outcome"]) for t in trials] == [
        (TrialState.FAIL, "diverged"),
        (TrialState.FAIL, "diverged"),
    ]
    assert all(
        (Path(tmp_path, t.user_attrs["run_dir"]) / "divergence.json").exists() for t in trials
    )


def test_a_far_worse_trial_is_pruned(
    tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.chdir(tmp_path)
    args = [
        "search.study=prune",
        "search.n_trials=3",
        "search.pruner.n_startup_trials=2",
        *SMALL,
        "trainer.max_steps=4",  # validations at steps 2 and 4
    ]
    plan, problems = make_plan(args)
    assert plan is not None, problems
    study, problems = open_study(plan)
    assert study is not None, problems
    for _ in range(2):  # two finished trials whose validation loss is 1e-6 at every step
        done = study.ask()
        for p in plan.space:
            p.suggest(done)
        done.report(1e-6, step=2)
        done.report(1e-6, step=4)
        study.tell(done, 1e-6)

    assert search_in_process(args, tmp_path, monkeypatch) == 0
    pruned = study_at(tmp_path, "prune").trials[-1]
    assert pruned.state == TrialState.PRUNED
    assert pruned.user_attrs["outcome"] == "pruned at step 2"
    assert list(pruned.intermediate_values) == [2]  # it stopped before step 4's validation


def test_a_different_command_on_an_existing_study_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    space, _ = parse_space({"optimizer.lr": "tag(log, interval(1e-5, 1e-1))"})
    plan = Plan(
        study="same",
        storage="sqlite:///outputs/search/same.db",
        metric="val/loss",
        direction="minimize",
        n_trials=4,
        sampler="tpe",
        pruner={"name": "none", "n_startup_trials": 0, "n_warmup_steps": 0},
        space=space,
        fixed=["loss=mse"],
    )
    assert open_study(plan)[1] == []
    assert open_study(replace(plan, n_trials=8))[1] == []  # a bigger budget is the same search
    study, problems = open_study(replace(plan, fixed=["loss=sum_diff"], direction="maximize"))
    assert study is None
    assert problems == [
        "study same in sqlite:///outputs/search/same.db was searched with another fixed, direction "
        "(fixed: ['loss=mse']; direction: minimize); run that command again, or start a new "
        "study: search.study=same_2"
    ]


def test_a_space_reads_hydras_sweep_syntax_and_lists_its_edges() -> None:
    space, problems = parse_space(
        {
            "optimizer": "choice(sgd, adam)",
            "optimizer.lr": "tag(log, interval(1e-5, 1e-1))",
            "data.batch_size": "range(16, 65, 16)",
            "trainer.max_steps": "tag(int, interval(50, 200))",
        }
    )
    assert problems == []
    assert [p.describe() for p in space] == [
        "choice(sgd, adam)",
        "tag(log, interval(1e-05, 0.1))",
        "choice(16, 32, 48, 64)",
        "tag(int, interval(50, 200))",
    ]
    points = corners(space)
    assert len(points) == 2 * 4 * 2  # every choice combination, intervals all low then all high
    assert points[:2] == [
        {"optimizer": "sgd", "data.batch_size": 16, "optimizer.lr": 1e-5, "trainer.max_steps": 50},
        {"optimizer": "sgd", "data.batch_size": 16, "optimizer.lr": 0.1, "trainer.max_steps": 200},
    ]


def test_a_space_that_cannot_be_drawn_from_is_one_line_a_key() -> None:
    _, problems = parse_space(
        {"optimizer.lr": "tag(log, interval(0, 1))", "seed": "7", "loss": "choice(mse"}
    )
    assert problems == [
        "search.params.optimizer.lr: a log-scale interval needs low > 0 (got 0.0); set it to e.g. 1e-6",
        "search.params.seed=7 is not a range to draw from; use one of: choice(a, b), range(start, stop, step), interval(low, high), tag(log, interval(low, high))",
        "search.params.loss: cannot parse 'choice(mse' (no viable alternative at input 'choice(mse'); write one of: choice(a, b), range(start, stop, step), interval(low, high), tag(log, interval(low, high))",
    ]

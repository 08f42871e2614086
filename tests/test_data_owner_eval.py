"""``secp-tune eval`` scores exactly the saved prompt, on a split or any labelled file, from any directory;
``run --help`` shows the whole recipe; progress reaches logs; scores are in percent (plain backend, tiny
model)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console
from test_data_owner_cli import run_args
from test_data_owner_common import synthetic_rows, tiny_setup, write_split

from data_owner.checkpoint import load_checkpoint
from data_owner.cli import build_config, main, run
from data_owner.config import RunConfig
from data_owner.progress import TuningProgress
from data_owner.runfolder import CHECKPOINT, CONFIG, PROMPT

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(model, data, task, run folder): a finished run whose kept prompt is a tuned one, not z = 0."""
    root = tmp_path_factory.mktemp("tuned")
    model, data, task = tiny_setup(root)
    out = root / "run"
    res = invoke(run_args(model, data, task, out, "--budget", "36", "--alpha", "4", "--quiet", "--json"))
    assert res.exit_code == 0, res.output
    return model, data, task, out


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def eval_json(*args: str) -> dict:
    res = invoke(["eval", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.glob("eval_*.json"):
        f.unlink()
    return dst


def test_eval_on_the_dev_file_reproduces_the_runs_dev_scores_exactly(tuned, tmp_path: Path) -> None:
    """The prompt's scale is the one fixed at training time (measured on train), not re-measured on the
    scored file: scoring dev gives exactly the dev score and loss the run recorded for the kept prompt."""
    _, data, _, src = tuned
    out = copy_run(src, tmp_path / "run")
    state = load_checkpoint(out / CHECKPOINT)
    record = json.loads((out / CONFIG).read_text())
    assert state["best"]["source"] != "zero-shot"  # a tuned prompt, so the scale matters
    ev = eval_json(str(out), "--split", "dev")
    assert ev["unit"] == "percent" and ev["std_ref"] == record["std_ref"]
    assert ev["tuned"] == 100 * state["best"]["dev_score"]
    assert ev["tuned_loss"] == pytest.approx(state["best"]["dev_loss"], rel=1e-9)
    assert ev["zero_shot"] == 100 * state["zero_shot"]["dev_score"]
    assert ev["zero_shot_loss"] == pytest.approx(state["zero_shot"]["dev_loss"], rel=1e-9)
    assert ev["file"] == str((data / "dev.tsv").resolve())

    # the old eval re-measured the scale on the scored file: on dev that is another prompt, whose dev loss
    # misses the recorded one (so the checks above can fail)
    from data_owner import metrics
    from data_owner.projection import Projection
    from data_owner.session import open_session, reference_std

    config = RunConfig.model_validate(record["config"])
    s = open_session(config, splits=("dev",), std_ref=record["std_ref"])
    dev = s.splits["dev"]
    dev_std = reference_std(config, s.encoder.embedding, dev)
    assert dev_std != record["std_ref"]
    std = Projection.entry_std(config.alpha, dev_std, config.intrinsic_dim, config.sigma0)
    rescaled = Projection(config.prompt_length, s.projection.H, config.intrinsic_dim, std, config.seed)
    logits = s.oracle.logits(rescaled(state["best"]["z"])[None], "dev")
    s.close()
    other_loss = float(metrics.loss(s.loss, logits, dev.labels)[0])
    assert other_loss != pytest.approx(state["best"]["dev_loss"], rel=1e-9)


def test_eval_scores_the_saved_prompt_file_and_any_file_by_path(tuned, tmp_path: Path) -> None:
    _, data, _, src = tuned
    out = copy_run(src, tmp_path / "run")
    by_split = eval_json(str(out))  # test split of the run's data folder
    elsewhere = tmp_path / "mine" / "my labelled.tsv"
    elsewhere.parent.mkdir()
    shutil.copy(data / "test.tsv", elsewhere)
    by_file = eval_json(str(out), "--file", str(elsewhere))
    import hashlib

    assert by_file["file"] == str(elsewhere.resolve()) and by_file["split"] is None
    assert by_file["sha256"] == hashlib.sha256(elsewhere.read_bytes()).hexdigest() == by_split["sha256"]
    for key in ("tuned", "zero_shot", "gain", "tuned_loss"):
        assert by_file[key] == by_split[key], key
    assert by_file["output"] == "eval_my-labelled.json" and (out / "eval_my-labelled.json").is_file()

    # the score is that of prompt.npy itself, scored directly on the plain backend
    from data_owner.session import open_session

    record = json.loads((out / CONFIG).read_text())
    s = open_session(RunConfig.model_validate(record["config"]), splits=("test",), std_ref=record["std_ref"])
    logits = s.oracle.logits(np.load(out / PROMPT)[None], "test")[0]
    labels = s.splits["test"].labels
    s.close()
    assert by_split["tuned"] == 100 * float((logits.argmax(-1) == labels).mean())
    lo, hi = by_split["gain_interval_95"]
    assert lo <= by_split["gain"] <= hi and by_file["gain_interval_95"] == [lo, hi]

    # another file: a different score and hash, recorded as such
    other = write_split(tmp_path / "other.tsv", synthetic_rows(5, 11))
    ev = eval_json(str(out), "--file", str(other), "--no-baseline")
    assert ev["examples"] == 10 and ev["sha256"] != by_split["sha256"] and "zero_shot" not in ev

    res = invoke(["eval", str(out), "--file", str(other), "--split", "dev"])
    assert res.exit_code == 2 and "does not go with --split" in res.stderr
    res = invoke(["eval", str(out), "--file", str(tmp_path / "missing.tsv")])
    assert res.exit_code == 2 and "data file not found" in res.stderr


def test_an_earlier_evaluation_is_never_overwritten_silently(tuned, tmp_path: Path) -> None:
    _, data, _, src = tuned
    out = copy_run(src, tmp_path / "run")
    first = eval_json(str(out))
    stamp = (out / "eval_test.json").read_bytes()
    second = eval_json(str(out), "--data-dir", str(data))
    assert (first["output"], second["output"]) == ("eval_test.json", "eval_test.2.json")
    assert (out / "eval_test.json").read_bytes() == stamp  # the first record is kept as it was
    res = invoke(["eval", str(out)])
    assert res.exit_code == 0 and "written: " in res.stderr and "eval_test.3.json" in res.stderr
    forced = eval_json(str(out), "--force")
    assert forced["output"] == "eval_test.json" and not (out / "eval_test.4.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert set(report["eval"]) == {"test", "test.2", "test.3"}
    assert "--force" in invoke(["eval", "--help"]).stdout and "numbered" in invoke(["eval", "--help"]).stdout


def test_old_run_folders_are_read_or_refused_clearly(tuned, tmp_path: Path) -> None:
    """A folder from before run_format 2 (scores as fractions, no data_files) still evaluates to the same
    prompt's score; one without the stored scale, or with a changed prompt file, is refused."""
    _, _, _, src = tuned
    reference = eval_json(str(copy_run(src, tmp_path / "new")))
    old = copy_run(src, tmp_path / "old")
    record = json.loads((old / CONFIG).read_text())
    for key in ("run_format", "score_unit", "data_files", "hidden"):
        del record[key]
    (old / CONFIG).write_text(json.dumps(record))
    (old / "eval_dev.json").write_text(json.dumps({"tuned": 0.5, "zero_shot": 0.25, "gain": 0.25}))
    ev = eval_json(str(old))
    assert ev["tuned"] == reference["tuned"] and ev["zero_shot"] == reference["zero_shot"]
    report = json.loads((old / "report.json").read_text())
    assert report["eval"]["dev"]["tuned"] == 50.0 and report["eval"]["dev"]["gain"] == 25.0

    del record["std_ref"]
    (old / CONFIG).write_text(json.dumps(record))
    res = invoke(["eval", str(old)])
    assert res.exit_code == 2 and "does not record the prompt's scale" in res.stderr, res.output

    tampered = copy_run(src, tmp_path / "tampered")
    np.save(tampered / PROMPT, np.load(tampered / PROMPT) * 1.01)
    res = invoke(["eval", str(tampered)])
    assert res.exit_code == 2 and "is not the prompt of the run's checkpoint" in res.stderr


def test_run_resume_and_eval_work_from_another_directory(tmp_path: Path, monkeypatch) -> None:
    """Relative paths are resolved once and stored absolute; an interrupted run resumes from elsewhere."""
    from data_owner.backends.plain import PlainOracle

    model, data, task = tiny_setup(tmp_path / "project")
    monkeypatch.chdir(tmp_path / "project")
    real, calls = PlainOracle.losses, {"n": 0}

    def interrupted(self, prompts, split="train"):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, prompts, split)

    monkeypatch.setattr(PlainOracle, "losses", interrupted)
    args = run_args(Path(model.name), Path(data.name), Path(task.name), Path("runs/r"), "--quiet")
    res = invoke(args)
    assert res.exit_code == 130 and "secp-tune resume" in res.stderr, res.output
    monkeypatch.setattr(PlainOracle, "losses", real)
    record = json.loads((tmp_path / "project/runs/r" / CONFIG).read_text())
    cfg = record["config"]
    assert cfg["data_dir"] == str(data.resolve()) and cfg["model"] == str(model.resolve())
    assert cfg["task"] == str(task.resolve())
    assert record["data_files"]["train"] == str((data / "train.tsv").resolve())

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = invoke(["resume", "../project/runs/r", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "finished"
    ev = eval_json("../project/runs/r")
    assert ev["file"] == str((data / "test.tsv").resolve()) and ev["examples"] == 32


def test_the_default_data_folder_is_the_bundled_one_wherever_run_starts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = build_config(None, {"task": "sst2", "model": "m", "backend": "plain"})
    assert config.data_dir == str(REPO / "data" / "sst2") and Path(config.data_dir).is_dir()
    assert config.model == str(tmp_path / "m")


def test_run_help_shows_help_and_default_for_every_recipe_option() -> None:
    ctx = click.Context(run)
    where = ("task", "data_dir", "model", "cluster", "backend", "suite", "insecure")  # not the recipe
    recipe = {n for n in RunConfig.model_fields if n not in where}
    seen = set()
    for param in run.params:
        if not isinstance(param, click.Option) or param.name not in recipe:
            continue
        seen.add(param.name)
        _, text = param.get_help_record(ctx)
        assert text and "[default: " in text, param.name
        default = RunConfig.model_fields[param.name].default
        if default is not None:
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert f"[default: {shown}]" in text, (param.name, text)
    # every field a user may set on the command line (the rest only through --config)
    assert recipe - seen == {"similarity_scale", "cma_diagonal"}, recipe - seen
    text = " ".join(invoke(["run", "--help"]).stdout.split())
    for part in ("--budget", "[default: 200]", "--sigma0", "bundled data/<task>", "[default: secure]"):
        assert part in text, part


def test_missing_cluster_error_points_at_the_plain_backend(tuned, tmp_path: Path) -> None:
    model, data, task, _ = tuned
    args = run_args(model, data, task, tmp_path / "run")
    i = args.index("--backend")
    res = invoke(args[:i] + args[i + 2 :])  # no --backend: the secure default, never plaintext silently
    text = " ".join(res.stderr.split())
    assert res.exit_code == 2 and "needs --cluster" in text
    assert "--backend plain runs without one, NOT PRIVATE" in text


def test_progress_in_logs_is_one_line_per_generation_with_the_full_label(tuned, tmp_path: Path) -> None:
    model, data, task, _ = tuned
    res = invoke(run_args(model, data, task, tmp_path / "run"))  # stderr is not a terminal here
    assert res.exit_code == 0
    lines = [ln for ln in res.stderr.splitlines() if " gen " in ln]
    assert len(lines) == 4, res.stderr
    for k, line in enumerate(lines, 1):
        assert "[plain (NOT PRIVATE)]" in line and f"gen {k}/4" in line and f"calls {6 * k}/24" in line
        assert "dev " in line and "%" in line and "ETA" in line

    # on a terminal: the live bar keeps the label too (it is text, not rich markup)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    with TuningProgress(console, "tiny [plain (NOT PRIVATE)]", 24) as bar:
        bar.update(
            {
                "calls": 6,
                "generation": 1,
                "generations": 4,
                "best_train_loss": 0.5,
                "best_dev": 75.0,
                "eta": 3.0,
                "elapsed": 1.0,
            }
        )
    assert "plain (NOT PRIVATE)" in buf.getvalue() and "75.0%" in buf.getvalue()


def test_scores_print_in_percent(tuned, tmp_path: Path) -> None:
    _, _, _, src = tuned
    out = copy_run(src, tmp_path / "run")
    res = invoke(["eval", str(out)])
    assert res.exit_code == 0
    ev = json.loads((out / "eval_test.json").read_text())
    assert f"tuned: {ev['tuned']:.2f}%" in res.stdout and f"gain: {ev['gain']:+.2f} points" in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["score_unit"] == "percent" and 1 < report["best_dev"] <= 100
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert history[0]["best_dev"] == report["zero_shot_dev"]


def test_gain_interval_is_a_paired_bootstrap_of_the_metric() -> None:
    """Identical predictions: exactly [0, 0]; one flipped prediction of 40: the interval holds the gain and
    is about one prediction's worth wide; a large gain on many examples excludes 0; F1 is resampled too."""
    from data_owner.metrics import f1, gain_interval

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=40)
    right, wrong = np.eye(2)[labels], np.eye(2)[1 - labels]
    assert gain_interval("accuracy", right, right, labels) == (0.0, 0.0)
    one = right.copy()
    one[0] = wrong[0]
    lo, hi = gain_interval("accuracy", right, one, labels)
    assert lo == 0.0 and 2.5 <= hi <= 7.5  # gain 2.5 points; at most 3 copies of the flipped row drawn
    many = np.where(
        rng.random(400)[:, None] < 0.3, np.eye(2)[1 - (labels.repeat(10))], np.eye(2)[labels.repeat(10)]
    )
    lo, hi = gain_interval("accuracy", np.eye(2)[labels.repeat(10)], many, labels.repeat(10))
    assert 20 < lo < 30 < hi < 40
    lo, hi = gain_interval("f1", right, one, labels)  # perfect F1 against one error: never negative
    f1_gain = 100 * (1 - f1(one.argmax(-1), labels))
    assert lo == 0.0 < f1_gain <= hi

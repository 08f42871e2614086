"""The built-in tasks' decoder templates and verbalizers: schema checks, and one token each for SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_owner.errors import DataOwnerError
from data_owner.task import ANSWER_MARK, builtin_tasks, load_task


@pytest.mark.parametrize("name", builtin_tasks())
def test_every_builtin_task_has_a_decoder_template_ending_in_the_answer_slot(name: str) -> None:
    task = load_task(name)
    assert task.decoder is not None and task.decoder.template.endswith(ANSWER_MARK)
    assert len(task.decoder.words) == task.num_classes
    example, answer = task.decoder.split()
    assert ANSWER_MARK not in example + answer and answer.strip()  # the answer template is not empty
    assert example.endswith("}")  # the example part ends with its last text slot


def _task_file(tmp_path: Path, decoder: dict) -> Path:
    raw = load_task("sst2").model_dump(exclude={"decoder"})
    path = tmp_path / "task.json"
    path.write_text(json.dumps({**raw, "decoder": decoder}))
    return path


@pytest.mark.parametrize(
    ("decoder", "message"),
    [
        ({"template": "Review: {text}\nSentiment:", "words": [" a", " b"]}, "must end with the answer slot"),
        ({"template": "Review: {text}<answer> .", "words": [" a", " b"]}, "must end with the answer slot"),
        ({"template": "<answer>{text}<answer>", "words": [" a", " b"]}, "must end with the answer slot"),
        ({"template": "Review:<answer>", "words": [" a", " b"]}, "has no text slot"),
        ({"template": "<P> {text}:<answer>", "words": [" a", " b"]}, "may not contain <P>"),
        ({"template": "{text}:<answer>", "words": [" a", " b", " c"]}, "decoder.words has 3 entries"),
        ({"template": "{text}:<answer>", "words": [" a", " a"]}, "distinct"),
    ],
)
def test_bad_decoder_sections_are_refused_when_the_task_loads(tmp_path, decoder, message) -> None:
    with pytest.raises(DataOwnerError, match=message):
        load_task(str(_task_file(tmp_path, decoder)))


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from mpc_core.nn.llama_weights import smollm2_gguf

    try:
        gguf = smollm2_gguf()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.mark.parametrize("name", builtin_tasks())
def test_builtin_verbalizer_words_are_single_smollm2_tokens(smollm2_tokenizer, name: str) -> None:
    from data_owner.decoder import decoder_word_ids

    task = load_task(name)
    ids = decoder_word_ids(smollm2_tokenizer, task.decoder.words)
    assert len(set(ids)) == task.num_classes
    assert [smollm2_tokenizer.decode([i]) for i in ids] == task.decoder.words

"""The secure loss oracle for a shared causal decoder (LLaMA family): the ``decoder_tuning`` job.

As :class:`~data_owner.backends.secure.SecureOracle` for the encoder (the job plumbing, the costs and the
failure handling are its own): every example, prompt, template and label leaves the data owner only as
secret shares, and only the shares of the losses (training) or the class scores (dev/test) come back.

What is uploaded (``server/programs/decoder.py`` reads it):

* per split, once: the example parts' token embeddings ``<split>.x`` [n, T, H] (right padding), for the
  training split the one-hot labels ``<split>.y``; in ``prefix`` placement each example row already ends
  with the answer template (``t_0, [prompt], t_1 .. t_k, template``: the servers insert the prompt after the
  first token), in ``suffix`` placement the template goes once as ``template.x`` [L_t, H] and the servers
  keep the examples' keys and values (``t_0 .. t_k, [prompt], template``);
* once per job, for a tied output embedding: the verbalizer words' rows ``verbalizer.x`` [C, H] of the
  public token embedding (an untied model's ``head.weight`` columns are the servers' own shares);
* per generation: the P candidate prompts, inline in the one request.

Both placements compute what :class:`~data_owner.backends.plain_decoder.PlainDecoderOracle` computes in
float64 (tests/test_decoder_secure.py).  There is never a fallback to the plaintext backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from data_owner.backends.secure import SecureOracle, open_tuning_job
from data_owner.decoder import DecoderModel, DecoderSplit, Placement
from data_owner.errors import DataOwnerError
from data_owner.oracle import LossOracle, check_prompts
from proto.decoder_contract import DecoderTuningParams

if TYPE_CHECKING:
    from data_owner.client import ClusterError
    from data_owner.config import RunConfig

DECODER_PROGRAM = "decoder_tuning"


class SecureDecoderOracle(SecureOracle):
    """Verbalizer next-token losses and logits of candidate prompts, computed by the cluster on shares."""

    private = True

    def __init__(
        self,
        job,
        fixed_point,
        parties: int,
        config: RunConfig,
        placement: Placement,
        word_ids: list[int],
        verbalizer_rows: np.ndarray | None,
    ) -> None:
        LossOracle.__init__(self)
        self.job = job
        self.fp = fixed_point
        self.parties = parties
        self.config = config
        self.label = f"secure {job.suite}"
        self.placement = placement
        self.word_ids = list(word_ids)
        self.tied = verbalizer_rows is not None
        self.splits: dict[str, tuple[DecoderSplit, str | None]] = {}
        self.template: np.ndarray | None = None  # the answer template's embeddings, once uploaded
        self.failure: ClusterError | None = None
        if verbalizer_rows is not None:
            self._upload("verbalizer.x", verbalizer_rows)

    @classmethod
    def connect(cls, config: RunConfig, model: DecoderModel, word_ids: list[int]) -> SecureDecoderOracle:
        """Open a ``decoder_tuning`` job on the cluster of ``config.cluster``."""
        job, fp, parties = open_tuning_job(config, DECODER_PROGRAM)
        rows = model.token_embedding()[word_ids] if model.cfg.tie_word_embeddings else None
        try:
            return cls(job, fp, parties, config, config.placement, word_ids, rows)
        except BaseException:
            job.client.close()
            raise

    def upload(self, name: str, split: DecoderSplit, loss: str | None = None) -> None:
        """Share the split once, in the layout of its placement."""
        if self.placement == "suffix":
            if self.template is None:
                self._upload("template.x", split.tail)
                self.template = np.asarray(split.tail)
            elif not np.array_equal(self.template, split.tail):
                raise DataOwnerError("every split of a run must end with the same answer template")
            self._upload(f"{name}.x", split.embeds)
        else:
            self._upload(f"{name}.x", with_template(split))
        if loss is not None:
            self._upload(f"{name}.y", split.onehot)
        self.splits[name] = (split, loss)

    def padding(self, split: str = "train") -> float:
        data, _ = self.splits[split]
        return float(data.attention_mask.size / max(1, data.attention_mask.sum()))

    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        return self._evaluate_split(prompts, split, "losses").reshape(len(prompts))

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        data, _ = self.splits[split]
        return self._evaluate_split(prompts, split, "logits").reshape(len(prompts), len(data), -1)

    def _evaluate_split(self, prompts: np.ndarray, split: str, output: str) -> np.ndarray:
        if split not in self.splits:
            raise KeyError(f"split {split!r} was not uploaded")
        data, loss = self.splits[split]
        prompts = check_prompts(prompts, data.prompt_length, data.embeds.shape[-1])
        if output == "losses" and loss is None:
            raise ValueError(f"split {split!r} was uploaded without labels")
        lengths = data.lengths + (0 if self.placement == "suffix" else data.tail.shape[0])
        params = DecoderTuningParams(
            split=split,
            placement=self.placement,
            output=output,
            loss=loss or "ce",
            lengths=[int(k) for k in lengths],
            label_words=self.word_ids,
        )
        inputs = [f"{split}.x", "prompts"] + ([f"{split}.y"] if output == "losses" else [])
        if self.placement == "suffix":
            inputs.append("template.x")
        if self.tied:
            inputs.append("verbalizer.x")
        return self._generate(prompts, inputs, params, output)


def with_template(split: DecoderSplit) -> np.ndarray:
    """[n, T + L_t, H]: each example part followed at once by the answer template (right padding kept)."""
    n, t, h = split.embeds.shape
    tail = split.tail.shape[0]
    out = np.zeros((n, t + tail, h))
    for i, k in enumerate(split.lengths):
        out[i, :k] = split.embeds[i, :k]
        out[i, k : k + tail] = split.tail
    return out

"""The run configuration: everything that determines a tuning run, saved as ``config.json`` in the run folder.

A resumed run reads this file back, so two runs with the same configuration (and the same data files, whose
hashes are recorded) follow the same CMA-ES trajectory.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_owner.errors import DataOwnerError
from mpc_core.suites import DEFAULT_SUITE, SuiteName

#: Padded tokens per real token a split's parts may reach by default.  Each part adds one encoder's rounds
#: to a generation: on SST-2's 32 training rows (8-45 tokens) 1.15 takes four parts where one costs 2.45x.
DEFAULT_MAX_PADDING = 1.15


class RunConfig(BaseModel):
    """One forward-only tuning run (BBT recipe; defaults from the measurements in docs/accuracy.md)."""

    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="built-in task name or a task file (.yaml/.json)")
    data_dir: str = Field(description="folder with train/dev[/test] .tsv/.csv/.jsonl files")
    model: str = Field(
        description="plain: a Hugging Face folder; secure: the public/ folder of the shared model"
    )
    backend: Literal["plain", "secure"] = "plain"
    suite: SuiteName = DEFAULT_SUITE
    cluster: str | None = Field(
        default=None, description="secure backend: the cluster's address or config file"
    )
    insecure: bool = Field(default=False, description="secure backend: no TLS (local development only)")
    max_sequences: int = Field(
        default=0, ge=0, description="secure backend: most sequences per request (0: a generation in one)"
    )
    max_padding: float = Field(
        default=DEFAULT_MAX_PADDING,
        ge=1.0,
        description="secure backend: padded tokens per real token a split's length-sorted parts may reach "
        "(inf: one part; each part adds one encoder pass's rounds)",
    )
    head: Literal["auto", "similarity", "mlm", "next-token"] = Field(
        default="auto",
        description="output head; auto: a decoder's next-token verbalizer logits, else the MLM verbalizer if "
        "the model has one, else similarity",
    )
    placement: Literal["prefix", "suffix"] = Field(
        default="prefix",
        description="where a decoder's prompt goes: prefix (after the first token, as BBT) or suffix (after "
        "the example text, before the answer template: the examples run once per run); encoders: prefix",
    )
    cache_limit_mb: float = Field(
        default=4096.0,
        gt=0,
        description="suffix placement: most MiB for the examples' kept keys and values (all splits together)",
    )
    similarity_scale: float = Field(
        default=20.0, gt=0, description="similarity head: cosine scores times this before the loss"
    )
    prompt_length: int = Field(default=5, ge=1, description="prompt length L in tokens (rows of the prompt)")
    prompt_init: Literal["zeros", "template"] = Field(
        default="zeros",
        description="decoders: the prompt's starting rows p0 (p = A z + p0): zeros (inserted zero rows), or "
        "template: the answer template's own tokens but its last, so that z = 0 is the model's plain input "
        "(the prompt length is then that token count)",
    )
    intrinsic_dim: int = Field(
        default=50, ge=1, description="intrinsic dimension d: CMA-ES searches z in R^d, prompt p = A z"
    )
    popsize: int = Field(default=20, ge=2, description="CMA-ES population: candidates per generation")
    sigma0: float = Field(default=1.0, gt=0, description="CMA-ES initial step size in the intrinsic space")
    #: 200 calls (10 generations of 20): on SST-2 with all-MiniLM-L6-v2 the prompts kept after 200 calls
    #: scored as well or better on test than those kept after 400 (later dev checks pick prompts that fit
    #: the 32 training rows; docs/accuracy.md), at half the cost.
    budget: int = Field(
        default=200, ge=1, description="training calls; one call = one candidate on the train split"
    )
    seed: int = Field(default=0, description="seed of the projection A and of CMA-ES")
    alpha: float = Field(default=1.0, gt=0, description="projection scale multiplier (BBT alpha)")
    scale_ref: Literal["word", "output"] = Field(
        default="output",
        description="std the projection scale follows: the word embeddings (BBT) or the embedding-layer "
        "output on the train split (fixed at training time, stored in the run folder)",
    )
    loss: Literal["task", "ce", "hinge"] = Field(
        default="task",
        description="training loss: the task's own (cross-entropy for the built-in tasks), ce or hinge",
    )
    eval_every: int = Field(default=100, ge=1, description="score the dev set every this many calls")
    k_shot: int | None = Field(
        default=None, ge=1, description="resample k examples per class from train and dev (seeded)"
    )
    max_length: int = Field(default=128, ge=8, description="most tokens per example (the text is cut to fit)")
    placeholder: str | None = Field(
        default=None,
        description="token whose rows carry the prompt (None: the tokenizer's unknown token); 'none': no "
        "placeholder rows, the prompt is added to the first L rows of the text (z = 0 is the plain input)",
    )
    pool: Literal["all", "text"] = Field(
        default="text",
        description="rows the similarity head mean-pools: 'all' real tokens, or 'text': all but the prompt's "
        "placeholder rows (they still take part in attention)",
    )
    attention: Literal["softmax", "rfa", "favor"] = Field(
        default="softmax", description="attention the servers compute (random-feature modes lose accuracy)"
    )
    features: int = Field(default=64, ge=2, description="random features for rfa/favor attention")
    cma_diagonal: bool = Field(default=False, description="CMA-ES with a diagonal covariance only")

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.backend == "secure" and not self.cluster:
            raise ValueError(
                "the secure backend needs --cluster CLUSTER_FILE (a running cluster, see docs/cluster.md); "
                "--backend plain runs without one, NOT PRIVATE"
            )
        return self

    @property
    def generations(self) -> int:
        return self.budget // self.popsize

    def check_budget(self) -> None:
        if self.budget < self.popsize:
            raise DataOwnerError(
                f"budget {self.budget} is below one generation (popsize {self.popsize}); "
                f"use --budget >= {self.popsize}"
            )

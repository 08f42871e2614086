"""The secure loss oracle: prompts go to the cluster only as secret shares; only result shares come back.

Per job the data owner secret-shares, once per split, the embedding-layer outputs [n, T, H] (and, for the
training split only, the one-hot labels [n, C]); per generation it shares the ``popsize`` prompts
[popsize, L, H] and sends each server its share in ONE request.  The servers run the batched secure forward
pass (``mpc_core.nn.candidate_losses`` / ``candidate_logits``) and keep shares of the result; the data owner
alone fetches every party's share and reconstructs the ``popsize`` losses (training) or the class scores of
its own examples (dev/test scoring).  There is never a fallback to the plaintext backend.

A generation is ONE request.  A split is shared once in length-sorted parts, each cut to its own longest
row (:func:`plan_parts`: the fewest parts, at most :data:`MAX_PARTS`, whose padded tokens stay within
``max_padding`` times the real ones, boundaries placed by a small dynamic programme), and that one request
names every part (``TuningParams.parts``): the servers run the encoder on each part in turn and take the
loss once over all rows, so the loss is the one of an unpadded computation (up to fixed-point error), with
one encoder's rounds per part.  One part padded to the longest row (the earlier default, 2.45x the real
tokens on SST-2's 32 training rows) is ``max_padding`` = inf.  With ``max_sequences`` > 0 (the servers'
memory grows with the sequences in one pass) no part has more rows than that, and the servers evaluate
each part in candidate groups of at most ``max_sequences`` sequences, still inside the one request.

Transport: helper F's :class:`data_owner.client.ClusterClient`.  The server-side program contract this
module expects (name :data:`TUNING_PROGRAM`):

- inputs ``<split>.p<i>.x`` (fixed point, [n_i, T_i, H]), ``<split>.p<i>.y`` (fixed point one-hot [n_i, C],
  training split only), ``prompts`` (fixed point [P, L, H]) and, for the similarity head, ``anchors.x`` (the
  label descriptions' embedding-layer outputs [C, T', H]);
- public parameters :class:`proto.contracts.TuningParams` (split, or the parts with their example lengths
  and mask positions, wanted output, loss, head, label-word ids, anchor lengths, similarity scale,
  attention mode, sequences per pass);
- output ``losses`` [P] or ``logits`` [P, n, C] (rows in part order).
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_owner.config import DEFAULT_MAX_PADDING
from data_owner.encode import EncodedSplit, PublicModel
from data_owner.errors import ClusterUnavailableError, DataOwnerError
from data_owner.oracle import LossOracle, check_prompts
from data_owner.task import Head, TaskSpec
from mpc_core.suites import suite_class
from proto.contracts import MAX_PARTS as REQUEST_PARTS
from proto.contracts import TuningParams, TuningPart, padding_lengths

if TYPE_CHECKING:
    from data_owner.client import ClusterError
    from data_owner.config import RunConfig

TUNING_PROGRAM = "prompt_tuning"
CLOSE_AFTER_FAILURE_S = 1.0
RELEASE_TIMEOUT_S = 5.0
#: Most parts of one split: each is one more pass (rounds) and two of a job's ``limits.max_inputs`` (64).
MAX_PARTS = 8


def plan_parts(
    lengths: np.ndarray,
    max_padding: float = DEFAULT_MAX_PADDING,
    max_rows: int = 0,
    max_parts: int = MAX_PARTS,
) -> list[np.ndarray]:
    """Row indices of each part: rows sorted by length (stable), cut into the fewest contiguous parts
    whose padded tokens (rows x the part's longest row, summed) are at most ``max_padding`` x the real
    tokens, each part at most ``max_rows`` rows (0: any).  When no ``max_parts`` parts reach the bound,
    the ``max_parts`` parts with the least padding are used; when ``max_rows`` alone needs more than
    ``max_parts`` parts, consecutive runs of ``max_rows`` sorted rows (the row cap decides, not padding).

    Exact: ``best[k][j]``, the least padded tokens of the ``j`` shortest rows in ``k`` parts, is
    ``min_i best[k-1][i] + (j - i) * length[j-1]`` (sorted, so a part's longest row is its last), one
    numpy minimum per (k, j): O(max_parts n) vector steps of length <= n, well under a second for 10^4 rows.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        raise ValueError("a split needs at least one example")
    if not max_padding >= 1.0:
        raise ValueError(f"max_padding must be at least 1.0, got {max_padding}")
    order = np.argsort(lengths, kind="stable")
    if math.isinf(max_padding) and not max_rows:
        return [order]
    length = lengths[order]
    cap = max_rows if max_rows else n
    least = -(-n // cap)
    if least > max_parts:
        return [order[s : s + cap] for s in range(0, n, cap)]
    limit = min(max_parts, n)
    bound = max_padding * float(length.sum())
    inf = np.iinfo(np.int64).max // 4
    best = np.full(n + 1, inf, dtype=np.int64)
    best[0] = 0
    cuts: list[np.ndarray] = []
    idx = np.arange(n + 1)
    for k in range(1, limit + 1):
        nxt = np.full(n + 1, inf, dtype=np.int64)
        cut = np.zeros(n + 1, dtype=np.int64)
        for j in range(k, n + 1):
            lo = max(k - 1, j - cap)
            cost = best[lo:j] + (j - idx[lo:j]) * length[j - 1]
            i = int(np.argmin(cost))
            nxt[j], cut[j] = cost[i], lo + i
        best = nxt
        cuts.append(cut)
        if k >= least and best[n] <= bound:
            break
    bounds = [n]
    for cut in reversed(cuts):
        bounds.append(int(cut[bounds[-1]]))
    bounds.reverse()
    return [order[a:b] for a, b in itertools.pairwise(bounds)]


def open_tuning_job(config: RunConfig, program: str):
    """Reach every server named in the cluster file ``config.cluster`` and open a job of ``program`` on
    the shared model they serve; returns (job, fixed point, number of compute parties).  Every failure is a
    clear data-owner error (no cluster file, a server down, a program the servers do not run)."""
    from data_owner.client import ClusterClient, ClusterError
    from mpc_core.ring import FixedPoint

    path = Path(config.cluster or "")
    if not path.is_file():
        raise DataOwnerError(f"cluster file not found: {path}")
    try:
        # the cluster file sets the deadline of every call (limits.call_deadline_s): a secure forward
        # of a real model takes minutes, far longer than a status call
        client = ClusterClient.from_file(path, insecure=config.insecure)
    except (OSError, ValueError) as exc:
        raise DataOwnerError(f"cannot use the cluster file {path}: {exc}") from exc
    try:
        info = client.server_info()
    except ClusterError as exc:
        client.close()
        raise ClusterUnavailableError(f"the cluster in {path} is not available: {exc}") from exc
    programs = set.intersection(*(set(r.programs) for r in info.values()))
    if program not in programs:
        client.close()
        raise ClusterUnavailableError(
            f"the cluster in {path} does not run the {program!r} program (it runs {sorted(programs)})"
        )
    digests = {r.model_digest for r in info.values() if r.role == "party"}
    try:
        job = client.open_job(program, model_digest=digests.pop() if len(digests) == 1 else "")
    except ClusterError as exc:
        client.close()
        raise ClusterUnavailableError(f"the cluster refused the tuning job: {exc}") from exc
    return job, FixedPoint(client.config.frac_bits), len(client.compute_parties)


class SecureOracle(LossOracle):
    private = True

    def __init__(
        self,
        job,
        fixed_point,
        parties: int,
        head: Head,
        config: RunConfig,
        anchors: tuple[np.ndarray, np.ndarray] | None,
        word_ids: list[int] | None,
    ) -> None:
        super().__init__()
        self.job = job
        self.fp = fixed_point
        self.parties = parties
        self.head = head
        self.config = config
        self.label = f"secure {job.suite}"
        self.word_ids = word_ids
        self.anchor_lengths = None if anchors is None else padding_lengths(anchors[1])
        self.splits: dict[str, tuple[EncodedSplit, str | None]] = {}
        self.parts: dict[str, list[np.ndarray]] = {}
        self.tokens: dict[str, tuple[int, int]] = {}  # per split: (padded, real) tokens as shared
        self.failure: ClusterError | None = None  # the first failed call: close() then skips dead servers
        if anchors is not None:
            self._upload("anchors.x", anchors[0])

    @classmethod
    def connect(
        cls,
        config: RunConfig,
        task: TaskSpec,
        head: Head,
        model: PublicModel,
        *,
        anchors: tuple[np.ndarray, np.ndarray] | None,
        word_ids: list[int] | None,
    ) -> SecureOracle:
        """Reach every server named in the cluster file ``config.cluster`` and open a tuning job."""
        job, fp, parties = open_tuning_job(config, TUNING_PROGRAM)
        return cls(job, fp, parties, head, config, anchors, word_ids)

    # ------------------------------------------------------------------ LossOracle
    def upload(self, name: str, split: EncodedSplit, loss: str | None = None) -> None:
        """Share the split once, in length-sorted parts each cut to its own longest row (:func:`plan_parts`
        under ``max_padding``, at most ``max_sequences`` rows a part)."""
        real = split.attention_mask.sum(1)
        max_padding = float(self.config.max_padding)
        parts = plan_parts(real, max_padding, self.config.max_sequences)
        padded = 0
        for i, rows in enumerate(parts):
            T = int(real[rows].max())
            padded += T * len(rows)
            self._upload(f"{name}.p{i}.x", split.embeds[rows, :T])
            if loss is not None:
                self._upload(f"{name}.p{i}.y", split.onehot[rows])
        self.splits[name] = (split, loss)
        self.parts[name] = parts
        self.tokens[name] = (padded, int(real.sum()))

    def padding(self, split: str = "train") -> float:
        """Padded tokens per real token of the split as shared (1.0: no padding at all)."""
        padded, real = self.tokens[split]
        return padded / real

    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        """Mean loss over the split: one request naming every part (the servers average over all rows).

        A split cut by ``max_sequences`` into more parts than one request may name (``MAX_PARTS`` of the
        contract) takes one request per group of parts: the row-weighted mean of their means (exact)."""
        data, _ = self.splits[split]
        total = np.zeros(len(prompts))
        for group in self._requests(split):
            rows = sum(len(self.parts[split][i]) for i in group)
            total += self._evaluate(prompts, split, group, "losses").reshape(len(prompts)) * rows
        return total / len(data)

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        data, _ = self.splits[split]
        out = np.empty((len(prompts), len(data), data.num_classes))
        for group in self._requests(split):
            rows = np.concatenate([self.parts[split][i] for i in group])  # the servers' rows: part order
            value = self._evaluate(prompts, split, group, "logits")
            out[:, rows] = value.reshape(len(prompts), len(rows), -1)
        return out

    def close(self) -> None:
        """Close the job everywhere.  After a cluster failure, only where a server still answers, and
        without waiting: the others dropped the job already (an abort reaches every peer), and a server
        that is paused or gone would hold the data owner's error back for another full call deadline."""
        from data_owner.client import ClusterError

        try:
            if self.failure is None:
                self.job.close()
            else:
                reachable = [p for p in self.job.client.participants if p not in self.failure.unreachable]
                self.job.client.close_quietly(self.job.job_id, reachable, timeout_s=CLOSE_AFTER_FAILURE_S)
        except ClusterError:
            pass
        finally:
            self.job.client.close()

    @property
    def job_ref(self) -> str:
        return self.job.job_id

    def release(self, job_ref: str) -> None:
        """Close an earlier run's job on every server that still holds it (best effort, short timeouts).

        A server that was paused or unreachable when that run failed (or every server, when the data owner
        itself was killed) keeps the job: a peer's orderly close does not drop it, and nothing else does
        until ``job_idle_timeout_s`` (an hour by default) while it occupies one of ``max_jobs`` slots."""
        if job_ref != self.job.job_id:
            self.job.client.close_quietly(job_ref, self.job.client.participants, timeout_s=RELEASE_TIMEOUT_S)

    # ------------------------------------------------------------------ pieces
    def _upload(self, name: str, value: np.ndarray) -> None:
        ring = self.fp.encode(np.asarray(value, dtype=np.float64))
        self._guard(self.job.upload, name, ring)
        self.cost.bytes_sent += suite_class(self.job.suite).share_bytes(ring.size) * self.parties

    def _requests(self, split: str) -> list[list[int]]:
        """The split's parts in groups, one request each: all of them in one unless there are more than
        one request may name."""
        count = len(self.parts[split])
        return [list(range(g, min(g + REQUEST_PARTS, count))) for g in range(0, count, REQUEST_PARTS)]

    def _evaluate(self, prompts: np.ndarray, split: str, group: list[int], output: str) -> np.ndarray:
        """These parts of a split for all candidates: ONE request (one call per participant)."""
        data, loss = self.splits[split]
        prompts = check_prompts(prompts, data.prompt_length, data.embeds.shape[-1])
        if output == "losses" and loss is None:
            raise ValueError(f"split {split!r} was uploaded without labels")
        parts = []
        for i in group:
            rows = self.parts[split][i]
            T = int(data.attention_mask[rows].sum(1).max())
            parts.append(
                TuningPart(
                    name=f"{split}.p{i}",
                    lengths=padding_lengths(data.attention_mask[rows, :T]),
                    mask_positions=data.mask_pos[rows].tolist() if self.head == "mlm" else None,
                )
            )
        # one part: the one-part form (top-level split and lengths), as such a request always was
        layout = (
            {"split": parts[0].name, "lengths": parts[0].lengths, "mask_positions": parts[0].mask_positions}
            if len(parts) == 1
            else {"split": split, "parts": parts}
        )
        params = TuningParams(
            **layout,
            output=output,
            loss=loss or "ce",
            head=self.head,
            pool_exclude=list(data.pool_exclude) or None,
            label_words=self.word_ids,
            anchor_lengths=self.anchor_lengths,
            scale=self.config.similarity_scale,
            attention=self.config.attention,
            features=self.config.features,
            max_sequences=self.config.max_sequences,
        )
        inputs = [f"{part.name}.x" for part in parts] + ["prompts"]
        if output == "losses":
            inputs += [f"{part.name}.y" for part in parts]
        if self.anchor_lengths is not None:
            inputs.append("anchors.x")
        return self._generate(prompts, inputs, params, output)

    def _generate(self, prompts: np.ndarray, inputs: list[str], params, output: str) -> np.ndarray:
        """ONE call per participant: the candidates' shares inline, the result shares and statistics back;
        the reconstructed ``output`` and its costs."""
        t0 = time.perf_counter()
        ring = self.fp.encode(np.asarray(prompts, dtype=np.float64))
        generation = self._guard(self.job.generate, {"prompts": ring}, inputs, params, [output])
        self.cost.bytes_sent += suite_class(self.job.suite).share_bytes(ring.size) * self.parties
        value = generation.reveal_float(output)
        self.cost.bytes_received += suite_class(self.job.suite).share_bytes(value.size) * self.parties
        self.cost.rounds += 1
        self.cost.seconds += time.perf_counter() - t0
        self._server_traffic(generation.metrics)
        return np.asarray(value, dtype=np.float64)

    def _server_traffic(self, metrics: dict) -> None:
        """Peer bytes (all participants) and online rounds (the busiest party) of this job so far."""
        self.cost.server_bytes = int(sum(m["wire"].get("bytes_sent", 0) for m in metrics.values()))
        self.cost.server_rounds = int(
            max(sum(op["rounds"] for op in m["ops"].values()) for m in metrics.values())
        )

    def _guard(self, fn, *args):
        from data_owner.client import ClusterError

        try:
            return fn(*args)
        except ClusterError as exc:
            self.failure = exc
            raise ClusterUnavailableError(f"the cluster failed: {exc}") from exc

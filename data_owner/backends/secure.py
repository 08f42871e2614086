"""The secure loss oracle: prompts go to the cluster only as secret shares; only result shares come back.

Per job the data owner secret-shares, once per split, the embedding-layer outputs [n, T, H] (and, for the
training split only, the one-hot labels [n, C]); per generation it shares the ``popsize`` prompts
[popsize, L, H] and sends each server its share in ONE request.  The servers run the batched secure forward
pass (``mpc_core.nn.candidate_losses`` / ``candidate_logits``) and keep shares of the result; the data owner
alone fetches every party's share and reconstructs the ``popsize`` losses (training) or the class scores of
its own examples (dev/test scoring).  There is never a fallback to the plaintext backend.

By default a split is one part and a generation ONE request.  With ``max_sequences`` > 0 (the servers'
memory grows with the sequences in one batch) a split is shared in parts of at most that many rows (sorted
by length, each cut to its longest row) and the candidates go in groups, so that no request holds more than
``max_sequences`` sequences; a training loss is then the row-weighted mean of the parts' mean losses
(exact), and the data owner also learns the parts' losses, which are its own data.

Transport: helper F's :class:`data_owner.client.ClusterClient`.  The server-side program contract this
module expects (name :data:`TUNING_PROGRAM`):

- inputs ``<split>.p<i>.x`` (fixed point, [n_i, T_i, H]), ``<split>.p<i>.y`` (fixed point one-hot [n_i, C],
  training split only), ``prompts`` (fixed point [P, L, H]) and, for the similarity head, ``anchors.x`` (the
  label descriptions' embedding-layer outputs [C, T', H]);
- public parameters :class:`proto.contracts.TuningParams` (split, wanted output, loss, head, example
  lengths, mask positions, label-word ids, anchor lengths, similarity scale, attention mode);
- output ``losses`` [P] or ``logits`` [P, n, C].
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from data_owner.encode import EncodedSplit, PublicModel
from data_owner.errors import ClusterUnavailableError, DataOwnerError
from data_owner.oracle import LossOracle, check_prompts
from data_owner.task import Head, TaskSpec
from mpc_core.suites import suite_class
from proto.contracts import TuningParams, padding_lengths

if TYPE_CHECKING:
    from data_owner.client import ClusterError
    from data_owner.config import RunConfig

TUNING_PROGRAM = "prompt_tuning"
CLOSE_AFTER_FAILURE_S = 1.0
RELEASE_TIMEOUT_S = 5.0


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
        if TUNING_PROGRAM not in programs:
            client.close()
            raise ClusterUnavailableError(
                f"the cluster in {path} does not run the {TUNING_PROGRAM!r} program "
                f"(it runs {sorted(programs)})"
            )
        digests = {r.model_digest for r in info.values() if r.role == "party"}
        try:
            job = client.open_job(TUNING_PROGRAM, model_digest=digests.pop() if len(digests) == 1 else "")
        except ClusterError as exc:
            client.close()
            raise ClusterUnavailableError(f"the cluster refused the tuning job: {exc}") from exc
        fp = FixedPoint(client.config.frac_bits)
        return cls(job, fp, len(client.compute_parties), head, config, anchors, word_ids)

    # ------------------------------------------------------------------ LossOracle
    def upload(self, name: str, split: EncodedSplit, loss: str | None = None) -> None:
        """Share the split once, in parts of at most ``max_sequences`` rows (one part when unlimited)."""
        cap = self.config.max_sequences
        if cap and len(split) > cap:
            order = np.argsort(split.attention_mask.sum(1), kind="stable")  # similar lengths share a part
            parts = [order[s : s + cap] for s in range(0, len(split), cap)]
        else:
            parts = [np.arange(len(split))]
        for i, rows in enumerate(parts):
            T = int(split.attention_mask[rows].sum(1).max())
            self._upload(f"{name}.p{i}.x", split.embeds[rows, :T])
            if loss is not None:
                self._upload(f"{name}.p{i}.y", split.onehot[rows])
        self.splits[name] = (split, loss)
        self.parts[name] = parts

    def losses(self, prompts: np.ndarray, split: str = "train") -> np.ndarray:
        """Mean loss over the split: the row-weighted mean of the parts' means (exact)."""
        data, _ = self.splits[split]
        total = np.zeros(len(prompts))
        for i, rows in enumerate(self.parts[split]):
            total += self._evaluate(prompts, split, i, "losses").reshape(len(prompts)) * len(rows)
        return total / len(data)

    def logits(self, prompts: np.ndarray, split: str) -> np.ndarray:
        data, _ = self.splits[split]
        out = np.empty((len(prompts), len(data), data.num_classes))
        for i, rows in enumerate(self.parts[split]):
            out[:, rows] = self._evaluate(prompts, split, i, "logits").reshape(len(prompts), len(rows), -1)
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

    def _evaluate(self, prompts: np.ndarray, split: str, part: int, output: str) -> np.ndarray:
        """One part of a split for all candidates: one request, or candidate groups under the cap."""
        data, loss = self.splits[split]
        prompts = check_prompts(prompts, data.prompt_length, data.embeds.shape[-1])
        if output == "losses" and loss is None:
            raise ValueError(f"split {split!r} was uploaded without labels")
        rows = self.parts[split][part]
        T = int(data.attention_mask[rows].sum(1).max())
        name = f"{split}.p{part}"
        params = TuningParams(
            split=name,
            output=output,
            loss=loss or "ce",
            head=self.head,
            lengths=padding_lengths(data.attention_mask[rows, :T]),
            pool_exclude=list(data.pool_exclude) or None,
            mask_positions=data.mask_pos[rows].tolist() if self.head == "mlm" else None,
            label_words=self.word_ids,
            anchor_lengths=self.anchor_lengths,
            scale=self.config.similarity_scale,
            attention=self.config.attention,
            features=self.config.features,
        )
        inputs = [f"{name}.x", "prompts"] + ([f"{name}.y"] if output == "losses" else [])
        if self.anchor_lengths is not None:
            inputs.append("anchors.x")
        cap = self.config.max_sequences
        group = len(prompts) if not cap else max(1, cap // len(rows))
        values = []
        t0 = time.perf_counter()
        for g in range(0, len(prompts), group):
            # one call per participant: the candidates' shares inline, the result shares and statistics back
            ring = self.fp.encode(np.asarray(prompts[g : g + group], dtype=np.float64))
            generation = self._guard(self.job.generate, {"prompts": ring}, inputs, params, [output])
            self.cost.bytes_sent += suite_class(self.job.suite).share_bytes(ring.size) * self.parties
            value = generation.reveal_float(output)
            self.cost.bytes_received += suite_class(self.job.suite).share_bytes(value.size) * self.parties
            self.cost.rounds += 1
            values.append(np.asarray(value, dtype=np.float64))
        self.cost.seconds += time.perf_counter() - t0
        self._server_traffic(generation.metrics)
        return np.concatenate(values, axis=0)

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

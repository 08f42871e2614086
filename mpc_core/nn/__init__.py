"""Transformer layers, heads and losses written once for a plaintext float64 backend and a secure one.

Modules: ``config`` (architecture and attention options), ``backend`` (PlainBackend, SecureBackend),
``attention`` / ``encoder`` (the blocks), ``heads`` (MLM verbalizer, similarity), ``loss``
(cross-entropy, hinge), ``batch`` (candidates x examples in one pass), ``weights`` (checkpoints).

Layers only: the public embedding layer and the token-id preprocessing are public and shared
by the data owner and the model owner (``contract.embedding``, ``contract.inputs``); the manifest and
share files are the contract between the roles (``contract.manifest``, ``contract.share_files``).
"""

from mpc_core.nn.backend import Backend, PlainBackend, SecureBackend
from mpc_core.nn.batch import candidate_logits, candidate_losses, insert_prompts
from mpc_core.nn.config import AttentionConfig, EncoderConfig, UnsupportedModelError
from mpc_core.nn.encoder import encode
from mpc_core.nn.heads import MLMHead, SimilarityHead, similarity_anchors
from mpc_core.nn.loss import cross_entropy, hinge

__all__ = [
    "AttentionConfig",
    "Backend",
    "EncoderConfig",
    "MLMHead",
    "PlainBackend",
    "SecureBackend",
    "SimilarityHead",
    "UnsupportedModelError",
    "candidate_logits",
    "candidate_losses",
    "cross_entropy",
    "encode",
    "hinge",
    "insert_prompts",
    "similarity_anchors",
]

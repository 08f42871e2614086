"""Transformer layers, heads and losses written once for a plaintext float64 backend and a secure one.

Modules: ``config`` (architecture and attention options), ``backend`` (PlainBackend, SecureBackend),
``attention`` / ``encoder`` (the blocks), ``embedding`` (the public embedding layer, plaintext),
``heads`` (MLM verbalizer, similarity), ``loss`` (cross-entropy, hinge), ``batch`` (candidates x
examples in one pass), ``weights`` / ``manifest`` (checkpoints and party share files), ``inputs``
(token ids with prompt placeholders).
"""

from mpc_core.nn.backend import Backend, PlainBackend, SecureBackend
from mpc_core.nn.batch import candidate_logits, candidate_losses, insert_prompts
from mpc_core.nn.config import AttentionConfig, EncoderConfig, UnsupportedModelError
from mpc_core.nn.embedding import PublicEmbeddings
from mpc_core.nn.encoder import encode
from mpc_core.nn.heads import MLMHead, SimilarityHead, similarity_anchors
from mpc_core.nn.loss import cross_entropy, hinge

__all__ = [
    "AttentionConfig",
    "Backend",
    "EncoderConfig",
    "MLMHead",
    "PlainBackend",
    "PublicEmbeddings",
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

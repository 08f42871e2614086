"""The model owner's offline tool: a local checkpoint to per-party share files (``secp-share-model``)."""

from model_owner.share import reconstruct, share_model, share_tensors

__all__ = ["reconstruct", "share_model", "share_tensors"]

"""The generated gRPC modules, regenerated first when stale: ``from proto.api import party_pb2, ...``."""

from proto.build import ensure_generated

ensure_generated()

from proto import party_pb2, party_pb2_grpc, peer_pb2, peer_pb2_grpc  # noqa: E402

__all__ = ["party_pb2", "party_pb2_grpc", "peer_pb2", "peer_pb2_grpc"]

"""The cluster's gRPC APIs: ``party.proto`` (data owner <-> server) and ``peer.proto`` (server <-> server).

Import the generated modules through :mod:`proto.api`, which generates them on first use.
"""

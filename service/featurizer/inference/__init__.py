"""Serving models: devices, image preparation, batching, the tensor path, loaded versions, the engine.

Imports ``registry`` and ``architectures``; never grpc, ``featurizer_client`` or ``rpc``."""

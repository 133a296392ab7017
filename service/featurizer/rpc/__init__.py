"""Transports: the featurizer.v1 and Open Inference Protocol servicers, interceptors, the status table, the server.

The only layer that knows grpc and protobuf."""

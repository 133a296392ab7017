"""featurizer: a gRPC service turning images into CNN feature vectors and predictions."""

__version__ = "0.1.0"

"""featurizer-client: embeddings and predictions from a featurizer server, as numpy. No torch."""

from .aio import AsyncFeaturizerClient
from .channel import RetryPolicy, Tls, read_token
from .client import FeaturizerClient
from .errors import FeaturizerError
from .messages import ClassScore, EmbedOptions, ModelInfo, ModelVersion, Prediction

__all__ = ["AsyncFeaturizerClient", "ClassScore", "EmbedOptions", "FeaturizerClient", "FeaturizerError",
           "ModelInfo", "ModelVersion", "Prediction", "RetryPolicy", "Tls", "read_token"]
__version__ = "0.1.0"

"""featurizer-client: embeddings and predictions from a featurizer server, as numpy. No torch."""

from .aio import AsyncFeaturizerClient
from .channel import RetryPolicy, Tls, read_token
from .bulk import Collected
from .client import FeaturizerClient
from .errors import FeaturizerError
from .jobs import Summary
from .messages import ClassScore, EmbedOptions, ModelInfo, ModelVersion, Prediction
from .window import Failure, ItemFailure, OnError, Result

__all__ = ["AsyncFeaturizerClient", "ClassScore", "Collected", "EmbedOptions", "Failure", "FeaturizerClient",
           "FeaturizerError", "ItemFailure", "ModelInfo", "ModelVersion", "OnError", "Prediction", "Result",
           "RetryPolicy", "Summary", "Tls", "read_token"]
__version__ = "0.1.0"

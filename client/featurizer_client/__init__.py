"""featurizer-client: embeddings and predictions from a featurizer server, as numpy. No torch."""

from .client import FeaturizerClient
from .errors import FeaturizerError

__all__ = ["FeaturizerClient", "FeaturizerError"]
__version__ = "0.1.0"

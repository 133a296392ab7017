"""``featurizer train``: datasets, the training loop, reports, and publishing into the registry."""

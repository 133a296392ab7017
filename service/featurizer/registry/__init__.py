"""The model registry on disk: manifests, confined file reads, scans, aliases and publishing.

Imports ``architectures`` (publishing checks that weights fit); never ``inference`` or ``rpc``."""

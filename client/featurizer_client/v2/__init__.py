"""Generated stubs for the Open Inference Protocol, package ``inference``
(``python protos/generate_v2.py``; do not edit by hand).

Not imported by ``featurizer_client`` itself: tritonclient registers the same protobuf package,
and one process cannot hold both (see protos/generate_v2.py).
"""

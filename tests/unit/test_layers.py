"""The server's layers, enforced: which package may import which, and no import cycles.

Read from the source with ``ast`` (every import statement, function-level ones too), so a lazy
import cannot hide a cycle or a layer breach. The layers, lowest first:

- foundation: ``settings``, ``logs``, ``metrics``, ``states`` (anyone may import them; they import no layer)
- ``architectures``: network builders (torch only)
- ``registry``: manifests, files, publishing (may use ``architectures`` to check weights fit)
- ``inference``: serving (no grpc, no protobuf, no ``featurizer_client``)
- ``rpc``: the transports, the only layer that knows grpc and the SDK's stubs
- ``training``: ``featurizer train`` (may use everything below ``rpc``)
- application: ``cli``, ``training_commands``, ``demo``, ``visualize``, ``__main__`` (nothing below imports them)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "service" / "featurizer"
FOUNDATION = {"settings", "logs", "metrics", "states", "__init__"}
APPLICATION = {"cli", "demo", "visualize", "training_commands", "__main__"}
LAYERS = ["foundation", "architectures", "registry", "inference", "rpc", "training", "application"]
# Outside imports a layer may not make (roots of module names).
FORBIDDEN_OUTSIDE = {
    "architectures": {"grpc", "google", "featurizer_client", "grpc_health", "grpc_reflection", "prometheus_client"},
    "registry": {"grpc", "google", "featurizer_client", "grpc_health", "grpc_reflection"},
    "inference": {"grpc", "google", "featurizer_client", "grpc_health", "grpc_reflection"},
    "foundation": {"torch", "torchvision", "grpc", "featurizer_client"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE_ROOT.rglob("*.py")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in FOUNDATION:
        return "foundation"
    if top in APPLICATION:
        return "application"
    assert top in LAYERS, f"{module}: in no layer; add its package to tests/unit/test_layers.py"
    return top


def imports_of(module: str) -> Iterator[str]:
    """Absolute names of everything ``module`` imports (featurizer modules resolved to modules)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                yield candidate if candidate in MODULES else source


def internal_graph() -> dict[str, set[str]]:
    return {m: {i for i in imports_of(m) if i in MODULES and i != m} for m in MODULES}


def test_every_module_is_in_a_layer():
    assert {layer_of(m) for m in MODULES} <= set(LAYERS)


def test_no_layer_imports_a_higher_one():
    breaches = []
    for module, imported in internal_graph().items():
        mine = LAYERS.index(layer_of(module))
        for other in imported:
            theirs = LAYERS.index(layer_of(other))
            if theirs > mine or (layer_of(other) == "application" and layer_of(module) != "application"):
                breaches.append(f"{module} ({layer_of(module)}) imports {other} ({layer_of(other)})")
    assert breaches == []


def test_lower_layers_know_nothing_of_grpc_or_the_sdk():
    breaches = []
    for module in MODULES:
        forbidden = FORBIDDEN_OUTSIDE.get(layer_of(module), set())
        for name in imports_of(module):
            if name.split(".")[0] in forbidden:
                breaches.append(f"{module} ({layer_of(module)}) imports {name}")
    assert breaches == []


def test_no_import_cycles():
    graph = internal_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert [" -> ".join(c) for c in cycles] == []


def test_the_checker_sees_a_breach():
    """The checks above would catch what they promise: the graph holds the edges we know of."""
    graph = internal_graph()
    assert "featurizer.inference.engine" in graph["featurizer.rpc.servicer"]
    assert layer_of("featurizer.rpc.server") == "rpc" and layer_of("featurizer.cli") == "application"

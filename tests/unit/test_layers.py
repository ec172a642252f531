"""The layers of docs/architecture.md hold: no module calls up.

The import graph of balancer/ is read from the sources (ast, nothing is imported). Imports under
`if TYPE_CHECKING:` are for type checkers only and are left out; imports inside functions count,
because deferring an import hides a cycle without breaking it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "balancer"

# The one deliberate cycle: a request's own objects, which call each other by design (the player's
# connection hands a request to its exchange, the exchange drives a backend connection, whose
# callbacks answer the exchange). Today they reach each other only through type imports and
# their .pxd files; a runtime import among them is allowed, one leaving the group is not.
DATA_PLANE_PEERS = frozenset({
    "balancer.http.client_side",
    "balancer.http.exchange",
    "balancer.http.upstream",
})

# What serves a request: everything the player's connection reaches. It must not reach the
# control plane (active health checks, Consul, the admin server, process wiring) nor aiohttp,
# which only the control plane uses (Consul).
DATA_PLANE_ROOTS = ("balancer.http.client_side", "balancer.server", "balancer.runtime")
CONTROL_PLANE = frozenset({
    "balancer.health", "balancer.discovery.consul", "balancer.admin", "balancer.admin_http",
    "balancer.app", "balancer.control", "balancer.workers", "balancer.status", "balancer.cli", "balancer.demo",
})
NOT_IN_DATA_PLANE = ("aiohttp",)

# The bottom layer: the config schema is imported by everyone and imports nothing of ours.
LEAVES = ("balancer.config", "balancer.outlier")

# The layers of docs/architecture.md, bottom first. A module imports its own layer and those
# below, never one above; a new module must be placed here (and in the picture).
LAYERS = (
    ("foundation", {
        "balancer", "balancer.compiled", "balancer.config", "balancer.addresses", "balancer.tasks",
        "balancer.signals", "balancer.http", "balancer.http.errors", "balancer.http.headers",
        "balancer.http.timers", "balancer.http.proxy_protocol", "balancer.balance.consistent_hash",
        "balancer.discovery", "balancer.outcomes", "balancer.log_format", "balancer.failures",
        "balancer.grammar", "balancer.http.downstream", "balancer.phases", "balancer.http.head_bytes",
        "balancer.http.methods", "balancer.http.uuid_text",
    }),
    ("state and decisions", {
        "balancer.pool", "balancer.outlier", "balancer.balance", "balancer.sticky", "balancer.retries",
        "balancer.routing", "balancer.geo", "balancer.split", "balancer.mirror", "balancer.metrics",
        "balancer.plugins", "balancer.http.parser", "balancer.tls", "balancer.certificates",
    }),
    ("data plane", {
        "balancer.runtime", "balancer.http.client_side", "balancer.http.exchange",
        "balancer.http.upstream", "balancer.server", "balancer.access_log", "balancer.log_bytes",
        "balancer.log_sink",
        "balancer.http.http2",
    }),
    ("control plane", {
        "balancer.health", "balancer.discovery.consul", "balancer.control", "balancer.status",
        "balancer.admin", "balancer.admin_http",
    }),
    ("process", {
        "balancer.config_file", "balancer.messages", "balancer.app", "balancer.workers",
        "balancer.cli", "balancer.demo", "balancer.__main__",
    }),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> set[str]:
    """Every module `module` imports at run time: ours by full name, others by top-level name."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name if alias.name in MODULES else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base if base in MODULES else base.split(".")[0])
        else:
            visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def cycles() -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in GRAPH[module]:
            if other not in MODULES:
                continue
            if other not in index:
                connect(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = set()
            while True:
                other = stack.pop()
                component.add(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(component)

    for module in MODULES:
        if module not in index:
            connect(module)
    return found


def reachable(roots: tuple[str, ...]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(GRAPH.get(module, ()))
    return seen


def test_the_graph_is_read() -> None:
    # The walk must see real imports, or every check below would pass on an empty graph.
    assert "balancer.http.exchange" in GRAPH["balancer.http.client_side"]
    assert "balancer.config" in GRAPH["balancer.runtime"]
    assert "aiohttp" in GRAPH["balancer.discovery.consul"]  # imported in a function
    assert "balancer.http.client_side" not in GRAPH["balancer.server"]  # type import only


def test_every_module_has_its_layer() -> None:
    placed = [module for _, modules in LAYERS for module in modules]
    assert sorted(placed) == sorted(MODULES)


def test_no_module_imports_a_layer_above_its_own() -> None:
    rank = {module: level for level, (_, modules) in enumerate(LAYERS) for module in modules}
    upward = sorted(
        f"{module} ({LAYERS[rank[module]][0]}) imports {other} ({LAYERS[rank[other]][0]})"
        for module, imported in GRAPH.items() for other in imported
        if other in rank and module in rank and rank[other] > rank[module]
    )
    assert upward == []


def test_no_import_cycle_outside_the_data_plane_peers() -> None:
    outside = [sorted(c) for c in cycles() if not c <= DATA_PLANE_PEERS]
    assert outside == [], f"import cycles: {outside}"


def test_the_data_plane_reaches_neither_the_control_plane_nor_aiohttp() -> None:
    data_plane = reachable(DATA_PLANE_ROOTS)
    assert "balancer.http.exchange" in data_plane and "balancer.pool" in data_plane
    assert sorted(data_plane & CONTROL_PLANE) == []
    assert [name for name in NOT_IN_DATA_PLANE if name in data_plane] == []


def test_the_listener_and_the_http_layer_do_not_import_each_other() -> None:
    # The listener is handed its HTTP/1.1 protocol factory. Known exception: it still imports
    # the HTTP/2 connection itself to hand a connection over after ALPN (Listener.speak_http2).
    assert "balancer.http.client_side" not in GRAPH["balancer.server"]
    assert "balancer.server" not in reachable(("balancer.http.client_side",))


def test_the_bottom_layer_imports_nothing_of_ours() -> None:
    for leaf in LEAVES:
        ours = sorted(m for m in GRAPH[leaf] if m.startswith("balancer."))
        assert ours == [], f"{leaf} imports {ours}"


def test_the_schema_does_not_reach_the_plugin_loader() -> None:
    assert "balancer.plugins" not in reachable(("balancer.config",))
    assert "balancer.plugins" in GRAPH["balancer.config_file"]  # where plugin settings are checked


def test_the_pool_does_no_io() -> None:
    # Closing idle backend connections is the upstream module's: the pool only keeps state.
    assert "balancer.http.upstream" not in reachable(("balancer.pool",))
    source = MODULES["balancer.pool"].read_text(encoding="utf-8")
    assert ".close()" not in source

"""The house rules of the layout (README, Architecture), read from the source: every
import, lazy ones included, goes one way between the packages, and no module imports
itself back through another (no cycles)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# package -> the packages it may import (besides itself and the standard library)
ALLOWED = {
    "protocol": set(),
    "transport": {"protocol"},
    "aggregator": {"protocol", "transport"},
    "hub": {"protocol", "transport", "aggregator"},
    "simulator": {"protocol", "transport", "aggregator", "hub"},
    "gridbid": {"protocol", "transport", "aggregator", "hub", "simulator"},
}
OURS = set(ALLOWED)


def modules():
    """{dotted module name: its path} of every package above."""
    found = {}
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path, name):
    """The modules of ours that the file imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: none today, but read them right
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))  # fmt: skip
            out.add(base)
            out |= {"%s.%s" % (base, a.name) for a in node.names}
    return {m for m in out if m.split(".")[0] in OURS}


def graph():
    known = modules()
    return {
        name: {m for m in imports(path, name) if m in known and m != name}
        for name, path in known.items()
    }


def test_imports_go_one_way_between_the_packages():
    wrong = [
        (name, target)
        for name, targets in graph().items()
        for target in targets
        if target.split(".")[0] != name.split(".")[0]
        and target.split(".")[0] not in ALLOWED[name.split(".")[0]]
    ]
    assert not wrong, wrong


def test_the_aggregator_and_the_service_never_import_the_simulator_or_each_other_back():
    g = graph()
    assert not [t for n, ts in g.items() if n.startswith("aggregator") for t in ts
                if t.startswith("hub")]  # fmt: skip
    assert not [t for n, ts in g.items() if n.startswith(("hub", "aggregator", "transport"))
                for t in ts if t.startswith("simulator")]  # fmt: skip


def test_no_module_imports_itself_back():
    g = graph()

    def package_of(m):  # importing a package's module imports the package first
        return {m.rsplit(".", k)[0] for k in range(m.count(".") + 1)}

    edges = {n: {t for t in ts if t not in package_of(n)} for n, ts in g.items()}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles

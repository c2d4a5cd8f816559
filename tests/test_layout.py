"""The code's layout, read from the sources: imports only point down (no cycle among the project's
modules, no module importing a script), and no function imports anything except the few
dependencies allowed below."""
import ast

from conftest import ROOT

# (file, module) -> why that module is imported inside a function rather than at the top
LAZY = {
    ("admin.py", "checkpoint"): "imports torch: only the checkpoint import command needs it",
    ("admin.py", "checkpoint_store"): "imports torch: only the checkpoint import command needs it",
    ("measure.py", "torch._dynamo.utils"): "torch internals, only for the compiled benchmarks",
    ("bench.py", "torch.profiler"): "only with --rollout-profile",
    ("report.py", "rollouts"): "imports torch: only report.py task --run-id needs it (a run's response to a task)",
}


def sources():
    return {p.stem: ast.parse(p.read_text(), str(p)) for p in sorted(ROOT.glob("*.py"))}


def imported(node):
    """Module names an import statement names (`from a import b` names a)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    return [node.module] if node.level == 0 and node.module else []


def function_imports(tree):
    """(line, module) of every import statement inside a function body."""
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    out += [(node.lineno, m) for m in imported(node)]
    return out


def import_graph(trees):
    return {name: sorted({m.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                          for m in imported(node)} & set(trees) - {name})
            for name, tree in trees.items()}


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in graph:
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = import_graph(sources())
    assert {"train", "data", "eval", "store", "model"} <= set(graph)  # the sources were found
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_module_imports_a_script():
    """A script (a module with a `__main__` block: train.py, data.py, eval.py, admin.py, bench.py) is
    the top of its stack: what another module needs from it belongs in a module below."""
    trees = sources()
    scripts = {name for name, tree in trees.items() for node in tree.body if isinstance(node, ast.If)
               and "__main__" in ast.unparse(node.test)}
    assert {"train", "data", "eval", "admin", "bench"} <= scripts
    found = [f"{name}.py imports {other}.py" for name, imports in import_graph(trees).items()
             for other in imports if other in scripts]
    assert not found, "; ".join(found)


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_imports_inside_functions_are_allowed_ones():
    found = [f"{name}.py:{line} imports {module}" for name, tree in sources().items()
             for line, module in function_imports(tree) if (f"{name}.py", module) not in LAZY]
    assert not found, "imports inside functions (move them to the top): " + "; ".join(found)


def test_function_imports_are_seen():
    tree = ast.parse("import a\ndef f():\n    import b\n    from c.d import e\n    g = lambda: 0\n")
    assert function_imports(tree) == [(3, "b"), (4, "c.d")]

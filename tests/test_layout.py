"""The code's layout, read from the sources: imports only point down (no cycle among the project's
modules, no module importing a script), the top level is the product (the benchmark's helpers live
in benchmarks/, which no product module imports), and no function imports anything except the few
dependencies allowed below."""
import ast

from conftest import ROOT

# (file, module) -> why that module is imported inside a function rather than at the top
LAZY = {
    ("admin.py", "reference_checkpoint"): "imports torch: only the checkpoint import and reference export commands need it",
    ("admin.py", "checkpoint_store"): "imports torch: only the checkpoint import command needs it",
    ("benchmarks/measure.py", "torch._dynamo.utils"): "torch internals, only for the compiled benchmarks",
    ("bench.py", "torch.profiler"): "only with --rollout-profile",
    ("report.py", "rollouts"): "imports torch: only report.py task --run-id needs it (a run's response to a task)",
}


def module_name(path):
    """`decode` for decode.py, `benchmarks.measure` for benchmarks/measure.py, `benchmarks` for its __init__."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources():
    """{module name: syntax tree} of the top level's modules and the benchmarks package's."""
    paths = sorted(ROOT.glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in paths}


def file_of(name):
    return name.replace(".", "/") + ".py" if name != "benchmarks" else "benchmarks/__init__.py"


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


def project_module(m, names):
    """The project module an imported name refers to (`benchmarks.measure` whole, `torch.nn` as `torch`)."""
    return m if m in names else m.split(".")[0]


def import_graph(trees):
    return {name: sorted({project_module(m, trees) for node in ast.walk(tree)
                          if isinstance(node, (ast.Import, ast.ImportFrom)) for m in imported(node)}
                         & set(trees) - {name})
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
    found = [f"{file_of(name)} imports {file_of(other)}" for name, imports in import_graph(trees).items()
             for other in imports if other in scripts]
    assert not found, "; ".join(found)


def test_top_level_is_the_product():
    """bench.py alone imports benchmarks/; every other top-level module serves a product script (data,
    train, eval, admin, report): a module only the benchmark needs belongs in benchmarks/."""
    trees = sources()
    graph = import_graph(trees)
    assert "benchmarks.measure" in graph["bench"]  # the package's modules were found
    found = [f"{name}.py imports {other}" for name, imports in graph.items() if "." not in name and name != "bench"
             for other in imports if other.startswith("benchmarks")]
    assert not found, "; ".join(found)
    reached, todo = set(), ["data", "train", "eval", "admin", "report"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += graph[name]
    bench_only = sorted(n for n in trees if "." not in n and n not in reached | {"bench", "benchmarks"})
    assert not bench_only, f"top-level modules no product script imports (move them to benchmarks/): {bench_only}"


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_imports_inside_functions_are_allowed_ones():
    found = [f"{file_of(name)}:{line} imports {module}" for name, tree in sources().items()
             for line, module in function_imports(tree) if (file_of(name), module) not in LAZY]
    assert not found, "imports inside functions (move them to the top): " + "; ".join(found)


def test_function_imports_are_seen():
    tree = ast.parse("import a\ndef f():\n    import b\n    from c.d import e\n    g = lambda: 0\n")
    assert function_imports(tree) == [(3, "b"), (4, "c.d")]

"""The task kinds, maze and Sokoban, behind one small interface; the one place that dispatches on a
dataset's `task` field.

A task (of(kind, params)) parses a prompt into its problem (ValueError when malformed), parses a
plan (None when malformed), checks a plan strictly (ours) or as the reference does, renders a
problem with a plan drawn, gives the mean A* trace length of a problem (the ILR metric's t*), and
the part of a prompt that names its layout (the tasks drawn on one wall layout share it); for
trace checking (traces.py) a problem's search space, where a bad plan goes wrong (plan_fault, whose
reason is WRONG_END for a legal walk that ends elsewhere) and, when A* is deterministic, its trace.
To add a kind: a module like maze.py, a class here, and an entry in KINDS.
"""
import maze
import sokoban


class Maze:
    kind = "maze"
    parse_plan = staticmethod(maze.parse_plan)
    check = staticmethod(maze.check_plan)
    check_reference = staticmethod(maze.reference_check)
    render = staticmethod(maze.render)
    search_space = staticmethod(maze.search_space)
    plan_fault = staticmethod(maze.plan_fault)
    WRONG_END = maze.WRONG_END

    def __init__(self, params):
        self.n, self.nondeterministic = params["n"], params.get("nondeterministic", False)

    def astar_trace(self, problem):
        """The trace tokens of A* on the problem when A* is deterministic, else None."""
        return None if self.nondeterministic else maze.trace_tokens(maze.astar(problem)[0])

    def parse_prompt(self, tokens):
        return maze.parse_prompt(tokens, self.n)

    def mean_trace_len(self, problem, runs, seed):
        return maze.mean_trace_len(problem, runs, seed, self.nondeterministic)

    @staticmethod
    def layout(prompt):
        """The part of a prompt (tokens or ids) that its wall layout's other tasks share: after `start x y goal x y`."""
        return prompt[6:]


class Sokoban:
    kind = "sokoban"
    parse_prompt = staticmethod(sokoban.parse_prompt)
    parse_plan = staticmethod(sokoban.parse_plan)
    check = staticmethod(sokoban.simulate)
    check_reference = staticmethod(sokoban.reference_check)
    render = staticmethod(sokoban.render)
    mean_trace_len = staticmethod(sokoban.mean_trace_len)
    search_space = staticmethod(sokoban.search_space)
    plan_fault = staticmethod(sokoban.plan_fault)
    WRONG_END = sokoban.WRONG_END

    def __init__(self, params):
        pass

    @staticmethod
    def astar_trace(problem):
        return None  # Sokoban's A* is always nondeterministic

    @staticmethod
    def layout(prompt):
        return prompt  # a level is a task of its own


KINDS = {"maze": Maze, "sokoban": Sokoban}


def of(kind, params):
    """The task of a dataset's kind and generation parameters; None for a kind without one
    (imported or synthetic datasets)."""
    return KINDS[kind](params) if kind in KINDS else None


def dataset_name(kind, **params):
    """The name a generated dataset of this kind and these parameters gets."""
    if kind == "maze":
        determinism = "nondeterministic" if params["nondeterministic"] else "deterministic"
        return f"maze.{params['n']}-by-{params['n']}-{determinism}.simple"
    return "sokoban.7-by-7-walls-2-boxes-2"

"""What the grid tasks (maze, Sokoban) share in their token format: a cell's coordinates are plain
decimal tokens, and a plan is one `plan x y` triple per state, from the first state to the last."""


def coord(tok, n=None) -> int:
    """A coordinate token's value; ValueError unless it is a plain decimal below n (when given)."""
    # plain non-negative decimal only, so "+1", " 1" or "01" cannot sneak through int()
    if not isinstance(tok, str) or not tok.isdigit() or tok != str(int(tok)):
        raise ValueError(f"bad coordinate {tok!r}")
    v = int(tok)
    if n is not None and v >= n:
        raise ValueError(f"coordinate {v} outside a {n}x{n} grid")
    return v


def plan_tokens(plan) -> list[str]:
    return [t for x, y in plan for t in ("plan", str(x), str(y))]


def parse_plan(tokens: list[str], n=None) -> list[tuple[int, int]] | None:
    """`plan x y` triples -> [(x, y), ...], coordinates below n when given; None if malformed."""
    if len(tokens) % 3 or any(t != "plan" for t in tokens[::3]):
        return None
    try:
        return [(coord(x, n), coord(y, n)) for x, y in zip(tokens[1::3], tokens[2::3])]
    except ValueError:
        return None

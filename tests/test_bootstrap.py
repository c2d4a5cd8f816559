"""Search dynamics bootstrapping: which response replaces a training sequence."""
import bootstrap
from test_metrics import DETOUR, JUMP, OPTIMAL, judge, response


def test_reduction_keeps_the_shortest_correct_optimal_response():
    verdicts = [judge(response(0, JUMP)),  # invalid, shortest
                judge(response(1, DETOUR)),  # correct but not optimal
                judge(response(6, OPTIMAL)),  # optimal, trace 30
                judge(response(3, OPTIMAL)),  # optimal, trace 15: the one
                judge(response(3, OPTIMAL)),  # a tie: the first one wins
                judge(response(1, OPTIMAL), eos=False)]  # truncated
    assert bootstrap.shortest_optimal(verdicts, trace_len=40) == 3
    # the reference's rule: the shortest optimal response even when longer than the sequence's own trace
    assert bootstrap.shortest_optimal(verdicts, trace_len=15) == 3 and bootstrap.shortest_optimal(verdicts, trace_len=5) == 3
    assert bootstrap.shortest_optimal(verdicts, trace_len=40, only_shorter=True) == 3
    assert bootstrap.shortest_optimal(verdicts, trace_len=15, only_shorter=True) is None  # not shorter than its own
    for only_shorter in (False, True):
        assert bootstrap.shortest_optimal(verdicts[:2] + verdicts[5:], 40, only_shorter) is None  # fall back to the original
        assert bootstrap.shortest_optimal([], 40, only_shorter) is None

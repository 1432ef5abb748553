"""Paired statistics on hand-made inputs, and the held-out parts of the test split they are computed on."""

import math

import pytest

from pocketchat.errors import UserError
from pocketchat.stats import binomial_two_sided, mean_ci, paired_test
from pocketchat.tasks import get_task, held_out_part, split_of


def test_binomial_two_sided_by_hand():
    assert binomial_two_sided(0, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(5, 5) == pytest.approx(2 / 32)
    assert binomial_two_sided(1, 5) == pytest.approx(2 * 6 / 32)
    assert binomial_two_sided(2, 5) == 1.0  # capped
    assert binomial_two_sided(0, 0) == 1.0


def test_mcnemar_counts_only_the_instances_where_the_models_disagree():
    # 100 instances: both right on 40, both wrong on 40, B alone right on 15, A alone right on 5.
    a = [1] * 40 + [0] * 40 + [0] * 15 + [1] * 5
    b = [1] * 40 + [0] * 40 + [1] * 15 + [0] * 5
    r = paired_test(a, b)
    assert (r.n, r.wins, r.losses) == (100, 15, 5)
    assert r.mean_a == pytest.approx(0.45) and r.mean_b == pytest.approx(0.55) and r.diff == pytest.approx(0.10)
    assert r.p == pytest.approx(2 * sum(math.comb(20, i) for i in range(6)) / 2**20)  # 0.0414
    assert r.ci_low < 0.10 < r.ci_high and r.ci_low > 0
    # B also right where only A was: no losses left, so stronger evidence.
    dominant = paired_test(a, [1] * 40 + [0] * 40 + [1] * 15 + [1] * 5)
    assert dominant.losses == 0 and dominant.p < r.p


def test_scores_take_the_paired_t_test_which_agrees_with_the_interval():
    a = [0.5, 0.5, 0.5, 0.2, 0.9, 0.3] * 50
    b = [0.5, 0.6, 0.7, 0.9, 0.8, 0.3] * 50
    r = paired_test(a, b)
    assert (r.wins, r.losses) == (150, 50)
    diffs = [y - x for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs))
    assert r.diff == pytest.approx(mean) and r.p == pytest.approx(math.erfc(mean / se / math.sqrt(2)))
    assert (r.p < 0.05) == (r.ci_low > 0)
    # Many tiny wins against a few large losses: the mean got worse, whatever the count of wins says.
    tiny = paired_test([0.5] * 200, [0.51] * 180 + [0.0] * 20)
    assert tiny.wins == 180 and tiny.diff < 0 and tiny.ci_high < 0 and tiny.p < 0.05
    assert paired_test([0.3, 0.4], [0.3, 0.4]).p == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([1, 0], [1])


def test_mean_ci_shrinks_with_n():
    _, lo_small, hi_small = mean_ci([0, 1] * 10)
    mean, lo, hi = mean_ci([0, 1] * 1000)
    assert mean == 0.5 and hi - lo < (hi_small - lo_small) / 5
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)


def test_held_out_parts_are_disjoint_fixed_and_inside_the_test_split():
    for name in ("add2", "word", "count_letters", "units"):
        task = get_task(name)
        select, report = task.held_out("select", 60, 0), task.held_out("report", 200, 0)
        assert len(select) == 60 and len(report) == 200
        assert not {e.key for e in select} & {e.key for e in report}
        assert all(split_of(e.key) == "test" for e in select + report)
        assert all(held_out_part(e.key) == "select" for e in select)
        assert [e.question for e in task.held_out("report", 50, 0)] == [e.question for e in report[:50]]
    with pytest.raises(UserError, match="held-out part"):
        get_task("add2").held_out("train", 5, 0)


def test_paired_report_pairs_records_by_case_and_cell():
    from pocketchat.alignment_eval import paired_report

    def records(correct: list[int], style: str) -> list[dict]:
        return [{"task": "add2", "style": style, "question": f"q{i}", "answer": "1", "completion": str(c),
                 "correct": bool(c), "gold": 0.7 * c} for i, c in enumerate(correct)]

    sft = records([0] * 10 + [1] * 10, "direct") + records([1] * 20, "cot")
    rl = records([1] * 10 + [1] * 10, "direct") + records([1] * 18 + [0] * 2, "cot")
    r = paired_report(rl, sft, [("add2", "direct"), ("add2", "cot")], "sft")
    m = r["metrics"]
    assert m["n"] == 40 and m["accuracy_sft"] == 0.75 and m["accuracy"] == 0.95
    assert m["p_accuracy"] == pytest.approx(binomial_two_sided(10, 12))
    assert [(c["style"], c["wins"], c["losses"]) for c in r["cells"]] == [("direct", 10, 0), ("cot", 0, 2)]
    assert r["cells"][0]["p"] == pytest.approx(2 / 1024) and r["cells"][1]["p"] == 0.5
    assert len(r["fixed"]) == 3 and len(r["broken"]) == 2 and r["broken"][0]["model"] == "0"
    with pytest.raises(UserError, match="2 baseline records for 1 cases"):
        paired_report(rl[:1], sft[:2], [("add2", "direct")], "sft")

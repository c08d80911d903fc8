"""Welch's t-test and the reports' significance verdicts (report/stats.py) against textbook values."""
import math
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ablations.report.stats import betainc, mcnemar_exact_p, prediction_t, t_two_sided_p, verdict, welch


@pytest.mark.parametrize("t, df, p", [
    (2.228139, 10, 0.05),   # the t table's 5 % two-sided critical value, df 10
    (2.0, 10, 0.07339),
    (1.0, 1, 0.5),          # df 1 is the Cauchy distribution: P(|T| > 1) = 1/2 exactly
    (12.706205, 1, 0.05),
    (1.959964, 1e7, 0.05),  # df -> infinity: the normal distribution
    (0.0, 5, 1.0),
])
def test_t_p_values_match_the_tables(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-5)


def test_betainc_edges_and_symmetry():
    assert betainc(2, 3, 0) == 0 and betainc(2, 3, 1) == 1
    assert betainc(2.5, 1.5, 0.3) == pytest.approx(1 - betainc(1.5, 2.5, 0.7), abs=1e-12)
    assert betainc(1, 1, 0.37) == pytest.approx(0.37)  # the uniform distribution


@settings(max_examples=80, deadline=None)
@given(t=st.floats(0, 50), df=st.floats(0.5, 500))
def test_p_is_a_two_sided_tail(t, df):
    p = t_two_sided_p(t, df)
    assert 0.0 <= p <= 1.0
    assert p == pytest.approx(t_two_sided_p(-t, df))
    assert t_two_sided_p(t + 0.5, df) <= p + 1e-12  # further out, smaller tail


def test_welch_by_hand():
    a, b = [91.0, 92.0, 93.0], [93.0, 94.5, 95.0, 96.5]
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 4
    t_want = (statistics.fmean(b) - statistics.fmean(a)) / math.sqrt(va + vb)
    df_want = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 3)
    t, df, p = welch(a, b)
    assert t == pytest.approx(t_want) and df == pytest.approx(df_want) and p == pytest.approx(t_two_sided_p(t_want, df_want))


def test_prediction_interval_test_of_one_run_against_several_seeds():
    """With 2 degrees of freedom Student's two-sided p has a closed form: 1 - t / sqrt(2 + t^2)."""
    t, df, p = prediction_t([0.0, 1.0, 2.0], 5.0)  # mean 1, s 1: t = 4 / sqrt(4/3)
    assert t == pytest.approx(4.0 / math.sqrt(4.0 / 3.0)) and df == 2.0
    assert p == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t))
    assert prediction_t([1.0, 1.0, 1.0], 1.0)[2] == 1.0 and prediction_t([1.0, 1.0, 1.0], 2.0)[2] == 0.0
    # either side may be the single run, and the verdict is symmetric in which one it is
    assert verdict([0.0, 1.0, 2.0], [5.0]) == ("not significant", pytest.approx(p))
    assert verdict([5.0], [0.0, 1.0, 2.0]) == ("not significant", pytest.approx(p))
    word, p = verdict([90.0, 90.2, 90.1], [93.0])
    assert word == "significant" and p < 0.01
    assert verdict([90.0, 90.2, 90.1], [90.15])[0] == "not significant"  # inside the spread


def test_verdicts_follow_the_project_rule():
    assert verdict([93.0], [94.0, 94.2]) == ("untested (n=1)", None)
    assert verdict([93.0], [94.0]) == ("untested (n=1)", None)
    # a 0.3 difference with a 1.0 seed spread is noise, whatever the test says
    word, p = verdict([93.0, 94.0, 95.0], [93.3, 94.3, 95.3])
    assert word == "not significant" and p > 0.05
    word, p = verdict([90.0, 90.1, 90.2, 90.1], [93.0, 93.1, 92.9, 93.0])
    assert word == "significant" and p < 1e-4


@given(st.integers(0, 60), st.integers(0, 60))
@settings(max_examples=200, deadline=None)
def test_mcnemar_exact_p_is_the_doubled_binomial_tail_and_symmetric(b, c):
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # P(X <= k), X ~ Binomial(n, 1/2)
    assert mcnemar_exact_p(b, c) == pytest.approx(min(1.0, 2 * tail), rel=1e-9, abs=1e-12)
    assert mcnemar_exact_p(b, c) == mcnemar_exact_p(c, b)


def test_mcnemar_exact_p_known_values():
    assert mcnemar_exact_p(10, 0) == pytest.approx(2 * 0.5 ** 10)  # all ten discordant examples one way
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0

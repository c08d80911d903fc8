"""Is a difference between two variants more than seed noise? Welch's t-test, with no SciPy: the two-sided
p-value of Student's t from the regularised incomplete beta function (Numerical Recipes' continued fraction).

The verdict the reports print follows the project's rule: a difference no larger than the seed spread (the larger
of the two standard deviations) is "not significant" whatever the test says; otherwise p < 0.05 decides, from
Welch's test with >= 2 seeds on both sides, or, for one run against >= 3 seeds of the other (an ablation that
runs its reference on several seeds and each change once), from the prediction-interval t-test: is the single
run outside what one more seed of the other would give, assuming the same seed variance (t = (x - mean) /
(s sqrt(1 + 1/n)), n - 1 degrees of freedom). Anything else (one seed against one or two) is untested."""
from __future__ import annotations

import math
import statistics

ALPHA = 0.05


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b), x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if df <= 0 or t != t:
        return float("nan")
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar test of two classifiers scored on the same examples: b examples only the first
    gets right, c only the second. Under "equally accurate" each of the b + c discordant examples falls either
    way with probability 1/2, so p = 2 P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1. It measures
    the test set's sampling noise for one pair of trained networks, not the seed-to-seed spread."""
    n, k = b + c, min(b, c)
    if n == 0:  # no discordant example: nothing tells them apart
        return 1.0
    # P(X <= k) = I_{1/2}(n - k, k + 1), the binomial tail as a regularised incomplete beta
    return min(1.0, 2.0 * betainc(n - k, k + 1, 0.5))


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(t, df, two-sided p) of Welch's unequal-variance t-test of mean(b) - mean(a); needs >= 2 values each."""
    na, nb = len(a), len(b)
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    se2 = va + vb
    if se2 == 0.0:  # identical constant samples: equal means are not different, unequal ones are
        return (0.0 if ma == mb else math.copysign(math.inf, mb - ma)), float(na + nb - 2), (1.0 if ma == mb else 0.0)
    t = (mb - ma) / math.sqrt(se2)
    den = (va ** 2 / (na - 1) if va else 0.0) + (vb ** 2 / (nb - 1) if vb else 0.0)
    df = se2 ** 2 / den if den > 0 else float(na + nb - 2)  # squares that underflow: the pooled df
    return t, df, t_two_sided_p(t, df)


MIN_PREDICTION_SEEDS = 3  # seeds one side needs before a single run on the other is tested against their spread


def prediction_t(many: list[float], one: float) -> tuple[float, float, float]:
    """(t, df, two-sided p) of one new value against a sample of >= 2: t = (one - mean) / (s sqrt(1 + 1/n))."""
    n, m, s = len(many), statistics.fmean(many), statistics.stdev(many)
    if s == 0.0:
        return (0.0 if one == m else math.copysign(math.inf, one - m)), float(n - 1), (1.0 if one == m else 0.0)
    t = (one - m) / (s * math.sqrt(1.0 + 1.0 / n))
    return t, float(n - 1), t_two_sided_p(t, n - 1)


def verdict(ref: list[float], vals: list[float]) -> tuple[str, float | None]:
    """('significant' | 'not significant' | 'untested (n=1)', p or None) for vals against ref."""
    if len(ref) >= 2 and len(vals) >= 2:
        _, _, p = welch(ref, vals)
        spread = max(statistics.stdev(ref), statistics.stdev(vals))
    elif min(len(ref), len(vals)) == 1 and max(len(ref), len(vals)) >= MIN_PREDICTION_SEEDS:
        many, one = (ref, vals[0]) if len(vals) == 1 else (vals, ref[0])
        p = prediction_t(many, one)[2]
        spread = statistics.stdev(many)
    else:
        return "untested (n=1)", None
    if abs(statistics.fmean(vals) - statistics.fmean(ref)) <= spread:
        return "not significant", p
    return ("significant" if p < ALPHA else "not significant"), p

"""lora_teach.stats: t quantiles against printed tables, paired intervals, the three verdicts, clear refusals."""

import math
import random

import pytest

from lora_teach.stats import VERDICTS, accuracy_standard_error, paired_comparison, t_quantile


@pytest.mark.parametrize("df,expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (120, 1.980)])
def test_t_quantile_matches_the_printed_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)


def test_t_quantile_at_other_levels():
    assert t_quantile(0.95, 4) == pytest.approx(2.132, abs=1e-3)
    assert t_quantile(0.995, 9) == pytest.approx(3.250, abs=1e-3)


def test_the_interval_is_the_textbook_one():
    a, b = [0.52, 0.55, 0.50, 0.53, 0.56], [0.47, 0.49, 0.46, 0.50, 0.50]
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    c = paired_comparison(a, b)
    assert c.mean == pytest.approx(mean)
    assert (c.high - c.low) / 2 == pytest.approx(2.776 * sd / math.sqrt(5), rel=1e-3)
    assert c.verdict == "better" and c.differences == pytest.approx(tuple(d))


def test_the_three_verdicts():
    assert paired_comparison([0.4, 0.41, 0.39, 0.40, 0.42], [0.5, 0.52, 0.49, 0.51, 0.50]).verdict == VERDICTS[1]
    assert paired_comparison([0.5, 0.4, 0.6, 0.45, 0.55], [0.5, 0.5, 0.5, 0.5, 0.5]).verdict == VERDICTS[2]
    assert "can't tell" in str(paired_comparison([0.5, 0.4, 0.6], [0.45, 0.5, 0.55]))


def test_pairing_separates_what_an_unpaired_reading_cannot():
    """Seeds move both methods together; A is always 0.01 above B. Two standard errors of the unpaired means
    overlap, the paired interval does not."""
    rng = random.Random(0)
    seed_effect = [rng.gauss(0, 0.05) for _ in range(5)]
    a = [0.5 + s + 0.01 + rng.gauss(0, 0.002) for s in seed_effect]
    b = [0.5 + s for s in seed_effect]
    assert paired_comparison(a, b).verdict == "better"
    spread = math.sqrt(sum((x - sum(b) / 5) ** 2 for x in b) / 4) / math.sqrt(5)
    assert abs(sum(a) / 5 - sum(b) / 5) < 2 * spread


def test_coverage_is_about_95_percent():
    """Over many simulated experiments with no true difference, about 5 % are called better or worse."""
    rng = random.Random(1)
    wrong = sum(paired_comparison([rng.gauss(0, 1) for _ in range(5)], [0.0] * 5).verdict != VERDICTS[2]
                for _ in range(2000))
    assert 0.03 < wrong / 2000 < 0.07


def test_accuracy_standard_error():
    assert accuracy_standard_error(0.5, 300) == pytest.approx(math.sqrt(0.25 / 300))
    assert accuracy_standard_error(1.0, 10) == 0


@pytest.mark.parametrize("call,words", [
    (lambda: paired_comparison([1, 2], [1]), "paired by seed"),
    (lambda: paired_comparison([1], [1]), "at least 2 seeds"),
    (lambda: paired_comparison([1, float("nan")], [1, 2]), "finite"),
    (lambda: paired_comparison([1, 2], [1, 2], confidence=95), "confidence"),
    (lambda: t_quantile(0.3, 4), "between 0.5 and 1"),
    (lambda: t_quantile(0.975, 0), "at least 1"),
    (lambda: accuracy_standard_error(1.2, 10), "between 0 and 1"),
    (lambda: accuracy_standard_error(0.5, 0), "at least 1"),
])
def test_bad_input_is_refused_with_the_allowed_values(call, words):
    with pytest.raises(ValueError, match=words):
        call()

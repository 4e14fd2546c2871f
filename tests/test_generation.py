"""Generation metrics: exact match and ROUGE-L F1 on whitespace tokens."""

import pytest

from peftkit.generation import exact_match, rouge_l


def test_exact_match_ignores_case_and_spacing_only():
    assert exact_match("  Good ", "good") == 1.0
    assert exact_match("good  movie", "Good movie") == 1.0
    assert exact_match("good.", "good") == 0.0


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("the cat sat", "the cat sat", 1.0),
        ("a b c d", "a c d e", 0.75),  # LCS "a c d": precision 3/4, recall 3/4
        ("a b", "a b c d", 2 * (1.0 * 0.5) / 1.5),  # precision 1, recall 1/2
        ("d c b a", "a b c d", 0.25),  # order matters: LCS length 1
        ("x y", "a b", 0.0),
        ("", "", 1.0),
        ("", "a", 0.0),
    ],
)
def test_rouge_l_f1(prediction, reference, expected):
    assert rouge_l(prediction, reference) == pytest.approx(expected)

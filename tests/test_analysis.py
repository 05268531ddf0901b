"""Calibration bins and ECE on hand-made predictions; the divergence curves start at the teacher."""

import pytest
import torch

from distill.analysis.predictions import divergence_curves, reliability


def test_reliability_bins_and_expected_calibration_error():
    probabilities = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.65, 0.35], [0.6, 0.4]])
    labels = torch.tensor([0, 1, 0, 0])  # bin 0.9-1.0: 1 of 2 right; bin 0.6-0.7: 2 of 2 right
    diagram = reliability(probabilities, labels, bins=10)
    assert diagram.count.tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert diagram.accuracy[9].item() == pytest.approx(0.5) and diagram.accuracy[6].item() == pytest.approx(1.0)
    assert diagram.confidence[6].item() == pytest.approx(0.625)
    # ECE = 2/4 * |0.95 - 0.5| + 2/4 * |0.625 - 1.0|
    assert diagram.ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.375)
    assert torch.isnan(diagram.accuracy[0])  # an empty bin


def test_every_divergence_is_zero_at_the_teacher_and_grows_away_from_it():
    generator = torch.Generator().manual_seed(0)
    teacher, direction = torch.randn(1, 6, generator=generator), torch.randn(1, 6, generator=generator)
    curves = divergence_curves(teacher, direction, torch.tensor([0.0, 1.0, 2.0]), target=teacher.argmax(1))
    for name, values in curves.items():
        if name == "PLD":  # a ranking likelihood: its minimum is not at the teacher
            continue
        assert abs(values[0].item()) < 1e-6 and values[2] > values[1] > 0, name


def test_draft_shapes_are_read_as_chains_and_trees():
    import pytest

    from distill.analysis.draft_run import parse_shape

    assert parse_shape("4") == {"depth": 4, "top_k": 1, "total_tokens": None}
    assert parse_shape("3x2") == {"depth": 3, "top_k": 2, "total_tokens": None}
    assert parse_shape("5x8x32") == {"depth": 5, "top_k": 8, "total_tokens": 32}
    with pytest.raises(ValueError, match="D, DxK or DxKxN"):
        parse_shape("1x2x3x4")

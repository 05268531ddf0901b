"""The draft's visual-token compressor: image runs pooled in groups, text positions untouched."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models.draft import DraftShape, EagleDraft
from distill.models.visual_pool import pool_visual, visual_groups

IMAGE = 9


def test_groups_cut_each_image_run_and_keep_text_positions_alone():
    image = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0, 1, 1], dtype=torch.bool)
    assert visual_groups(image, 2).tolist() == [0, 1, 1, 2, 2, 3, 4, 5, 6, 6]
    assert visual_groups(image, 1).tolist() == list(range(10))


def test_pooling_averages_each_group_and_reports_its_last_position():
    image = torch.tensor([0, 1, 1, 1, 0], dtype=torch.bool)
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    (pooled,), last = pool_visual((x,), image, 2)
    assert last.tolist() == [0, 2, 3, 4]
    expected = torch.stack([x[:, 0], x[:, 1:3].mean(1), x[:, 3], x[:, 4]], dim=1)
    assert torch.equal(pooled, expected)


def draft(pool: int) -> EagleDraft:
    return EagleDraft(DraftShape(8, 2, 2, 4, 16), visual_pool=pool, image_token_id=IMAGE)


def test_compress_pools_only_with_a_factor_and_image_tokens():
    f, e = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    ids = torch.tensor([[1, IMAGE, IMAGE, IMAGE, IMAGE, 5]] * 2)
    same = draft(1).compress(f, e, ids)
    assert same[0] is f and same[2] is None
    assert draft(4).compress(f, e, torch.ones_like(ids))[2] is None  # text only
    pf, pe, kept = draft(4).compress(f, e, ids)
    assert pf.shape == pe.shape == (2, 3, 8) and kept.tolist() == [0, 4, 5]
    assert torch.allclose(pf[:, 1], f[:, 1:5].mean(1))
    ragged = ids.clone()
    ragged[1, 1] = 3  # row 1's image is one token shorter: the rows compress to different lengths
    with pytest.raises(DistillError, match="compress differently; read them with compress_rows"):
        draft(2).compress(f, e, ragged)
    rows = draft(2).compress_rows(f, e, ragged)  # each row its own way, the shorter one padded
    assert rows.valid.sum(1).tolist() == [4, 5] and rows.mask is not None  # 1 + 2 + 1 and 1 + 1 + 2 + 1
    assert rows.aligned[1].tolist() == [1, 2, 4, 5, 6]  # a group inside the image, the last one before the text
    assert torch.equal(rows.features[1, 2], f[1, 2:4].mean(0)) and torch.equal(rows.features[1, 3], f[1, 4])
    with pytest.raises(DistillError, match="visual_pool"):
        EagleDraft(DraftShape(8, 2, 2, 4, 16), visual_pool=0)

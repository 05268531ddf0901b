"""Evaluation batches over W processes: every sample exactly once (no padding), and the same number of batches on
every rank, so sharded models' per-step gathers stay in step."""

from __future__ import annotations

import pytest

from distill.data.sharding import EvalShardBatches


@pytest.mark.parametrize(("size", "batch_size", "world"), [(360, 64, 2), (361, 64, 2), (129, 64, 2), (10, 3, 4)])
def test_each_sample_once_and_equal_batch_counts(size, batch_size, world):
    sampler = EvalShardBatches(size, batch_size)
    per_rank = [sampler.batches(rank, world) for rank in range(world)]
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(seen) == list(range(size))  # none missing, none twice
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(0 < len(batch) <= batch_size for batches in per_rank for batch in batches)


def test_a_rank_with_one_batch_fewer_splits_its_largest():
    # 129 samples: rank 0 has 65 (batches 64 + 1), rank 1 has 64 (one batch): rank 1's batch is split in two
    assert [len(b) for b in EvalShardBatches(129, 64).batches(1, 2)] == [32, 32]


def test_one_process_gets_contiguous_batches():
    assert EvalShardBatches(10, 4).batches(0, 1) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(EvalShardBatches(10, 4)) == 3  # outside a distributed run: one process


def test_impossible_split_is_named():
    with pytest.raises(ValueError, match="3 evaluation samples in batches of 1 cannot give each of 2 processes"):
        EvalShardBatches(3, 1).batches(1, 2)

"""Conversations packed several to a row, each kept to itself.

Rows of one conversation each are mostly padding when conversations are short next to `seq_len`. Packing puts
consecutive conversations end to end in one row (in the source's order, a new row when the next one does not fit on
every side), with position ids that restart at 0 for each. Given such position ids and no 2-D attention mask,
transformers 5 models find the sequences from the restarts (`masking_utils.find_packed_sequence_indices`) and mask
attention block-diagonally (eager and sdpa; flash-attention reads the same boundaries), so no token attends to
another conversation; the task passes packed rows that way. The
first token of each conversation is not trained on (its label is -100): the previous conversation's last position
would otherwise be trained to predict it, across the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

from distill.data.text_rows import IGNORE, TokenRow


def pack_groups(lengths: Sequence[Sequence[int]], limits: Sequence[int | None]) -> list[list[int]]:
    """Groups of consecutive item indices whose lengths, summed per side, fit that side's limit (None: any length).

    `lengths[s][i]` is item i's length on side s (student, teacher). Greedy in order, so the grouping depends only on
    the items; an item longer than a limit (already cut to it) gets a row to itself.
    """
    sides = len(limits)
    count = len(lengths[0]) if lengths else 0
    groups: list[list[int]] = []
    current: list[int] = []
    used = [0] * sides
    for item in range(count):
        need = [lengths[side][item] for side in range(sides)]
        fits = all(limit is None or used[side] + need[side] <= limit for side, limit in enumerate(limits))
        if current and not fits:
            groups.append(current)
            current, used = [], [0] * sides
        current.append(item)
        used = [u + n for u, n in zip(used, need, strict=True)]
    if current:
        groups.append(current)
    return groups


def packed_row(rows: Sequence[TokenRow]) -> TokenRow:
    """`rows` end to end as one row, with position ids restarting at each and each one's first token untrained."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for row in rows:
        ids.extend(row.ids)
        labels.extend([IGNORE, *row.labels[1:]])
        positions.extend(range(len(row.ids)))
    return TokenRow(ids, labels, positions=positions)

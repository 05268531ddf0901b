"""The draft's optional compressor of visual tokens: consecutive image positions are average-pooled in groups of
`factor`, so the draft attends over fewer positions (SpecVLM's compressed visual input). Text positions are kept."""

from __future__ import annotations

import torch


def visual_groups(image: torch.Tensor, factor: int) -> torch.Tensor:
    """`[T]` bool (image positions) -> `[T]` group ids, nondecreasing from 0: each text position is its own group,
    each run of image positions is cut into groups of `factor`."""
    groups, current, run = [], -1, 0
    for is_image in image.tolist():
        if not (is_image and run % factor):
            current += 1
        run = run + 1 if is_image else 0
        groups.append(current)
    return torch.tensor(groups, device=image.device)


def pool_visual(
    tensors: tuple[torch.Tensor, ...], image: torch.Tensor, factor: int
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Each `[B, T, H]` tensor pooled to `[B, G, H]` over the groups of `image` `[T]`; and `[G]`: the last original
    position of each group (where its prediction is compared with the target)."""
    groups = visual_groups(image, factor)
    count = int(groups[-1]) + 1
    sizes = torch.bincount(groups, minlength=count)
    pooled = tuple(
        torch.zeros(x.shape[0], count, x.shape[2], dtype=x.dtype, device=x.device).index_add_(1, groups, x)
        / sizes[None, :, None].to(x.dtype)
        for x in tensors
    )
    positions = torch.arange(len(groups), device=image.device)
    last = torch.zeros(count, dtype=torch.long, device=image.device).scatter_reduce_(0, groups, positions, "amax")
    return pooled, last

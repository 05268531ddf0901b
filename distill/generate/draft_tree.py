"""EAGLE-2's dynamic draft tree (docs/methods.md, section 12): grown by the draft, verified by the target in one pass.

Growing: from the root (the last emitted token, whose next-token distribution the draft has just predicted), the
`top_k` most likely tokens are the first level. At each further level the `top_k` nodes of the last level with the
highest value (the product of the draft's probabilities along the path from the root: the draft's own estimate of
the chance the path is accepted) are run through the draft together, each seeing the cached prefix and its own
ancestors, and each gets its `top_k` most likely children. After `depth` levels the `total_tokens` nodes of highest
value over the whole tree are kept (a node is never worth more than its parent, and ties keep the shallower node,
so the kept nodes form a tree). A chain is the tree of `top_k = 1`.

Verifying: the target reads the root and every kept node in one forward pass, with an attention mask that lets each
node see the prefix, the root and its own ancestors, at position (root's position + depth); its logits at a node
are its next-token distribution after that node's path. Walking down from the root, a child is accepted when it is
the target's own next token there (greedy), or when it is the token drawn from the target's distribution there
(sampling: the children are the draft's top-k, proposed with certainty, for which speculative sampling's rejection
rule reduces to drawing the target's token and descending if a child holds it). Either way each emitted token is
exactly what the target alone would emit: greedy's token, or a draw from its distribution.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from distill.errors import DistillError
from distill.models.draft import EagleDraft, KVCache


@dataclass(frozen=True)
class TreeShape:
    """How a draft tree grows: `depth` levels, `top_k` children per expanded node and nodes expanded per level,
    `total_tokens` nodes kept for verification (None: every node drawn, `top_k + (depth - 1) * top_k**2`)."""

    depth: int
    top_k: int = 1
    total_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise DistillError(f"speculative.depth must be >= 1, got {self.depth}")
        if self.top_k < 1:
            raise DistillError(f"speculative.top_k must be >= 1, got {self.top_k}")
        if self.total_tokens is not None and self.total_tokens < 1:
            raise DistillError(f"speculative.total_tokens must be >= 1 (or null: every node), got {self.total_tokens}")

    @property
    def drawn(self) -> int:
        """Nodes the growing draws."""
        return self.top_k + (self.depth - 1) * self.top_k**2

    @property
    def kept(self) -> int:
        return self.drawn if self.total_tokens is None else min(self.total_tokens, self.drawn)


@dataclass
class DraftTree:
    """Kept nodes in verification order (every parent before its children): `tokens`, `parents` (the index of each
    node's parent in these lists, -1 for the root), `depths` (1 for the root's children) and `values` (the draft's
    log-probability of the node's path from the root)."""

    tokens: list[int]
    parents: list[int]
    depths: list[int]
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def sees(self, device: torch.device) -> torch.Tensor:
        """`[N + 1, N + 1]` bool over the block [root, nodes...]: row i may attend to column j when j is i, the root
        or one of i's ancestors."""
        n = len(self)
        allowed = torch.eye(n + 1, dtype=torch.bool)
        allowed[:, 0] = True
        for i, parent in enumerate(self.parents, start=1):
            if parent >= 0:
                allowed[i] |= allowed[parent + 1]
        return allowed.to(device)

    def children(self) -> list[list[int]]:
        """For each block position (0: the root, i: node i - 1), the block positions of its children."""
        below: list[list[int]] = [[] for _ in range(len(self) + 1)]
        for i, parent in enumerate(self.parents, start=1):
            below[parent + 1].append(i)
        return below


def grow_tree(
    draft: EagleDraft,
    cache: KVCache,
    head: Callable[[torch.Tensor], torch.Tensor],
    embed: Callable[[torch.Tensor], torch.Tensor],
    root_feature: torch.Tensor,
    shape: TreeShape,
) -> DraftTree:
    """The draft tree after the root, whose predicted feature `root_feature` `[1, 1, H]` the draft has just made
    (its cache holds the prefix it read). The draft's cache gains one entry per expanded node: the caller crops it
    back to the prefix after verification."""
    prefix = len(cache)
    device = root_feature.device
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    values: list[float] = []
    features: dict[int, torch.Tensor] = {-1: root_feature[0, -1]}  # node -> the draft's f^ at its position
    cached: list[int] = []  # the node of each tree entry in the draft's cache, in order

    def add_children(of: list[int], log_probs: torch.Tensor) -> None:
        top_values, top_tokens = most_likely(log_probs, shape.top_k)  # (len(of), k) each
        for row, parent in enumerate(of):
            base = values[parent] if parent >= 0 else 0.0
            for value, token in zip(top_values[row].tolist(), top_tokens[row].tolist(), strict=True):
                tokens.append(token)
                parents.append(parent)
                depths.append(depths[parent] + 1 if parent >= 0 else 1)
                values.append(base + value)

    add_children([-1], head(root_feature[:, -1]).float().log_softmax(-1))
    level = list(range(len(tokens)))
    for depth in range(2, shape.depth + 1):
        expanded = sorted(level, key=lambda node: -values[node])[: shape.top_k]
        x_features = torch.stack([features[parents[node]] for node in expanded])[None]  # (1, k, H)
        x_embeddings = embed(torch.tensor([[tokens[node] for node in expanded]], device=device))
        positions = torch.full((len(expanded),), prefix + depth - 2, device=device)
        # built on the host: the draft's attention needs it on the queries' device (a GPU's)
        mask = expansion_mask(expanded, cached, parents, prefix).to(device)
        predicted = draft(x_features, x_embeddings, cache, positions, mask)
        cached += expanded
        for row, node in enumerate(expanded):
            features[node] = predicted[0, row]
        start = len(tokens)
        add_children(expanded, head(predicted[0]).float().log_softmax(-1))
        level = list(range(start, len(tokens)))
    return keep_best(tokens, parents, depths, values, shape.kept)


def most_likely(log_probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` largest values of each row and their indices; for k = 1 the argmax (the first of equal values, as
    greedy decoding picks), since topk may break ties otherwise."""
    if k == 1:
        tokens = log_probs.argmax(-1, keepdim=True)
        return log_probs.gather(-1, tokens), tokens
    top = log_probs.topk(k, dim=-1)
    return top.values, top.indices


def expansion_mask(expanded: list[int], cached: list[int], parents: list[int], prefix: int) -> torch.Tensor:
    """`[1, 1, k, prefix + len(cached) + k]` bool: each expanded node sees the draft's prefix, the cache entries
    of its ancestors and itself."""
    k = len(expanded)
    allowed = torch.zeros(k, prefix + len(cached) + k, dtype=torch.bool)
    allowed[:, :prefix] = True
    entry = {node: prefix + i for i, node in enumerate(cached)}
    for row, node in enumerate(expanded):
        ancestor = parents[node]
        while ancestor >= 0:
            allowed[row, entry[ancestor]] = True
            ancestor = parents[ancestor]
        allowed[row, prefix + len(cached) + row] = True
    return allowed[None, None]


def keep_best(tokens: list[int], parents: list[int], depths: list[int], values: list[float], count: int) -> DraftTree:
    """The `count` nodes of highest value (ties: the shallower first), each with its parent, in verification order
    (by depth, then value)."""
    ranked = sorted(range(len(tokens)), key=lambda node: (-values[node], depths[node]))
    kept: set[int] = set()
    for node in ranked:
        if len(kept) == count:
            break
        if parents[node] < 0 or parents[node] in kept:
            kept.add(node)
    order = sorted(kept, key=lambda node: (depths[node], -values[node]))
    index = {node: i for i, node in enumerate(order)}
    return DraftTree(
        tokens=[tokens[node] for node in order],
        parents=[index[parents[node]] if parents[node] >= 0 else -1 for node in order],
        depths=[depths[node] for node in order],
        values=[values[node] for node in order],
    )


def verification_inputs(
    tree: DraftTree, root: int, position: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target's block `[1, N + 1]` (root, nodes), its position ids `[1, N + 1]` (root at `position`, a node at
    `position + depth`) and its additive attention mask `[1, 1, N + 1, position + N + 1]` in `dtype` (0 where a
    position may attend: the cached prefix, the root, the node's ancestors and itself; the dtype's minimum else)."""
    ids = torch.tensor([[root, *tree.tokens]], device=device)
    positions = torch.tensor([[position, *(position + d for d in tree.depths)]], device=device)
    sees = torch.cat([torch.ones(len(tree) + 1, position, dtype=torch.bool, device=device), tree.sees(device)], dim=1)
    mask = torch.zeros(sees.shape, dtype=dtype, device=device).masked_fill_(~sees, torch.finfo(dtype).min)
    return ids, positions, mask[None, None]


def accepted_path(tree: DraftTree, choices: list[int]) -> tuple[list[int], int]:
    """Walk from the root: at each block position, descend into the child holding `choices[position]` (the target's
    token there: its argmax, or its draw); the block positions of the accepted nodes, and the target's token after
    the last of them (emitted whatever happens)."""
    below, block_tokens = tree.children(), [-1, *tree.tokens]
    path, current = [], 0
    while True:
        child = next((c for c in below[current] if block_tokens[c] == choices[current]), None)
        if child is None:
            return path, choices[current]
        path.append(child)
        current = child

"""Naive float64 references for the feature losses, written from docs/methods.md, section 11 with loops and
explicit sums (none calls the losses' code), and the token mask the masked tests share."""

from __future__ import annotations

import math

import torch


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm = math.sqrt(sum(float(x) ** 2 for x in v.detach()))
    return v * 0.0 if norm <= 1e-12 else v / torch.sqrt((v * v).sum())


def _smooth_l1(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z * z if abs(z.item()) < 1 else z.abs() - 0.5


def _pool(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Adaptive average pooling by its definition: output cell i averages input rows floor(iI/O) .. ceil((i+1)I/O)."""
    rows = []
    for i in range(size[0]):
        h0, h1 = (i * f.shape[2]) // size[0], -((-(i + 1) * f.shape[2]) // size[0])
        cols = []
        for j in range(size[1]):
            w0, w1 = (j * f.shape[3]) // size[1], -((-(j + 1) * f.shape[3]) // size[1])
            cols.append(f[:, :, h0:h1, w0:w1].sum(dim=(2, 3)) / ((h1 - h0) * (w1 - w0)))
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


def ref_hint(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    flat_s, flat_t = s.double().flatten(), t.double().flatten()
    return sum((flat_s[k] - flat_t[k]) ** 2 for k in range(len(flat_s))) / len(flat_s)


def ref_at(s: torch.Tensor, t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    s, t = _pool(s.double(), size), _pool(t.double(), size)
    total = 0.0
    for b in range(s.shape[0]):
        a_s = _unit(
            torch.stack(
                [
                    sum(s[b, c].flatten()[j] ** p for c in range(s.shape[1])) / s.shape[1]
                    for j in range(size[0] * size[1])
                ]
            )
        )
        a_t = _unit(
            torch.stack(
                [
                    sum(t[b, c].flatten()[j] ** p for c in range(t.shape[1])) / t.shape[1]
                    for j in range(size[0] * size[1])
                ]
            )
        )
        total = total + sum((a_s[j] - a_t[j]) ** 2 for j in range(len(a_s)))
    return total / (s.shape[0] * size[0] * size[1])


def _gram_rows(x: torch.Tensor) -> list[torch.Tensor]:
    x = x.double().reshape(x.shape[0], -1)
    return [
        _unit(torch.stack([sum(x[i, k] * x[j, k] for k in range(x.shape[1])) for j in range(len(x))]))
        for i in range(len(x))
    ]


def ref_sp(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    g_s, g_t = _gram_rows(s), _gram_rows(t)
    batch = len(g_s)
    return sum(((g_t[i] - g_s[i]) ** 2).sum() for i in range(batch)) / batch**2


def ref_rkd(s: torch.Tensor, t: torch.Tensor, wd: float = 25.0, wa: float = 50.0) -> torch.Tensor:
    xs, xt = s.double().reshape(len(s), -1), t.double().reshape(len(t), -1)
    batch = len(xs)

    def distances(x: torch.Tensor) -> list[list[torch.Tensor]]:
        d = [
            [torch.sqrt(((x[i] - x[j]) ** 2).sum()) if i != j else x[i, 0] * 0 for j in range(batch)]
            for i in range(batch)
        ]
        positive = [d[i][j] for i in range(batch) for j in range(batch) if d[i][j].item() > 0]
        mean = sum(positive) / len(positive)
        return [[d[i][j] / mean for j in range(batch)] for i in range(batch)]

    def angles(x: torch.Tensor) -> list[torch.Tensor]:
        return [
            (_unit(x[j] - x[i]) * _unit(x[k] - x[i])).sum()
            for i in range(batch)
            for j in range(batch)
            for k in range(batch)
        ]

    d_s, d_t = distances(xs), distances(xt)
    dist = sum(_smooth_l1(d_s[i][j] - d_t[i][j]) for i in range(batch) for j in range(batch)) / batch**2
    angle = sum(_smooth_l1(a - b) for a, b in zip(angles(xs), angles(xt), strict=True)) / batch**3
    return wd * dist + wa * angle


def ref_pkt(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    def rows(x: torch.Tensor) -> list[list[torch.Tensor]]:
        x = x.double().reshape(len(x), -1)
        n = [x[i] / (torch.sqrt((x[i] ** 2).sum()) + eps) for i in range(len(x))]
        sim = [[((n[i] * n[j]).sum() + 1) / 2 for j in range(len(x))] for i in range(len(x))]
        return [[v / sum(row) for v in row] for row in sim]

    p, q = rows(t), rows(s)
    batch = len(p)
    return sum(p[i][j] * torch.log((p[i][j] + eps) / (q[i][j] + eps)) for i in range(batch) for j in range(batch)) / (
        batch**2
    )


def ref_hidden(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    s, t = s.double(), t.double()
    values = []
    for b, pos in mask.nonzero().tolist():
        if kind == "mse":
            values.append(sum((s[b, pos, d] - t[b, pos, d]) ** 2 for d in range(s.shape[2])) / s.shape[2])
        else:
            dot = sum(s[b, pos, d] * t[b, pos, d] for d in range(s.shape[2]))
            values.append(1 - dot / (torch.sqrt((s[b, pos] ** 2).sum()) * torch.sqrt((t[b, pos] ** 2).sum())))
    return sum(values) / len(values)


def token_mask(batch: int, length: int) -> torch.Tensor:
    """A fixed (B, T) mask with some positions off in every row (none at all when B = 0)."""
    return torch.arange(batch * length).reshape(batch, length) % 3 != 1

"""Loss terms on intermediate features: the layers a recipe names on each side, checked and measured on one tiny
forward pass before training, the projectors that map the student's features to the teacher's shapes, and the
reading of those features during a step.

A feature term is written like any term, with the layers it reads:
`fitnet: {loss: hint, weight: 100, student: layer2, teacher: layer2}`; `student` and `teacher` are a layer or a list
of layers of equal length (paired in order), as `distill.models.taps` names them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.models.taps import LayerName, Tap, captured, resolve_tap
from losses.consumes import FEATURES, TOKEN_FEATURES
from losses.projector import FeatureProjector, can_project, projector_for

FEATURE_KINDS = frozenset({FEATURES, TOKEN_FEATURES})
LAYER_KEYS = ("student", "teacher")  # a feature term's recipe keys that are not arguments of its loss
INJECTED_ARGS = ("num_samples",)  # set from the data, not the recipe
Shape = tuple[int, ...]
# runs a model on a tiny batch of the data's kind, on the given device and floating dtype
Probe = Callable[[nn.Module, torch.device, torch.dtype], Any]


def reads_features(loss: type[nn.Module] | nn.Module) -> bool:
    declared = getattr(loss, "consumes", None)
    return getattr(declared, "kind", None) in FEATURE_KINDS


def shape_arguments(loss: type[nn.Module]) -> tuple[str, ...]:
    """The constructor arguments of `loss` that come from the feature shapes or the data, not from the recipe."""
    return (*getattr(loss, "shape_arguments", ()), *INJECTED_ARGS)


def layer_list(value: LayerName | list[LayerName]) -> list[LayerName]:
    return list(value) if isinstance(value, list) else [value]


class FeatureTerm(nn.Module):
    """A feature loss with the layers it reads and, when the loss compares features of one shape
    (`needs_teacher_shape`), a projector per pair (trained with the student, kept in checkpoints, not exported).

    Called `term(student_features, teacher_features, *inputs, **extra)` with the features of its own layers, in
    order; the inputs are those of its loss's kind.
    """

    def __init__(
        self,
        loss: nn.Module,
        student_layers: list[LayerName],
        teacher_layers: list[LayerName],
        projectors: list[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.consumes = loss.consumes
        self.student_layers, self.teacher_layers = list(student_layers), list(teacher_layers)
        self.projectors = nn.ModuleList(projectors) if projectors is not None else None
        self.per_token = self.consumes.kind == TOKEN_FEATURES  # (B, T, D): projected token by token

    def forward(self, student: list[torch.Tensor], teacher: list[torch.Tensor], *inputs: Any, **extra: Any) -> Any:
        if self.projectors is not None:
            student = [self.project(p, feature) for p, feature in zip(self.projectors, student, strict=True)]
        return self.loss(student, teacher, *inputs, **extra)

    def project(self, projector: nn.Module, feature: torch.Tensor) -> torch.Tensor:
        if not self.per_token:
            return projector(feature)
        return projector(feature.flatten(0, -2)).unflatten(0, feature.shape[:-1])  # (B, T, D_s) -> (B, T, D_t)


class LayerReader:
    """The layers one model is read at, resolved once; `read()` captures them while the model runs."""

    def __init__(self, model: nn.Module | None, names: list[LayerName], what: str) -> None:
        self.names = list(dict.fromkeys(names))  # each layer once, however many terms read it
        self.taps: list[Tap] = [resolve_tap(model, name, what) for name in self.names] if model is not None else []

    def read(self) -> AbstractContextManager[Captured]:
        if not self.taps:  # nothing to read: no hooks to set, a cost every step
            return nullcontext(NOTHING_READ)
        return self._capture()

    @contextmanager
    def _capture(self) -> Iterator[Captured]:
        with captured(self.taps) as found:
            yield Captured(self.names, found)


class Captured:
    """What one forward pass left at the read layers (filled when the model has run)."""

    def __init__(self, names: list[LayerName], found: list[torch.Tensor | None]) -> None:
        self.names, self.found = names, found

    def select(self, names: list[LayerName]) -> list[torch.Tensor]:
        features = [self.found[self.names.index(name)] for name in names]
        missing = [name for name, feature in zip(names, features, strict=True) if feature is None]
        if missing:
            raise DistillError(f"layer {missing[0]!r} did not run in the forward pass, so it has no feature to read")
        return features  # type: ignore[return-value]

    def shapes(self, names: list[LayerName], per_token: bool = False) -> list[Shape]:
        """Per-sample shapes (without the batch dimension) of the selected features; per token (the last
        dimension) for hidden states, whose length varies."""
        return [tuple(feature.shape[-1:] if per_token else feature.shape[1:]) for feature in self.select(names)]


NOTHING_READ = Captured([], [])


def feature_readers(
    terms: dict[str, nn.Module], student: nn.Module, teacher: nn.Module | None
) -> tuple[LayerReader, LayerReader]:
    """The student's and the teacher's readers for every feature term in `terms`."""
    feature_terms = [term for term in terms.values() if isinstance(term, FeatureTerm)]
    student_names = [name for term in feature_terms for name in term.student_layers]
    teacher_names = [name for term in feature_terms for name in term.teacher_layers]
    return LayerReader(student, student_names, "student"), LayerReader(teacher, teacher_names, "teacher")


def probe_features(model: nn.Module, reader: LayerReader, probe: Probe) -> Captured:
    """`reader`'s layers after one forward pass of `model` on the probe batch: in eval mode (no running statistic
    moves), without gradient, the model's modes restored afterwards."""
    modes = {module: module.training for module in model.modules()}
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.dtype.is_floating_point else torch.float32
    model.eval()
    try:
        with torch.no_grad(), reader.read() as features:
            probe(model, device, dtype)
    finally:
        for module, mode in modes.items():
            module.train(mode)
    return features


def build_feature_terms(
    specs: dict[str, dict[str, Any]],
    losses: Callable[[str], type[nn.Module]],
    student: nn.Module,
    teacher: nn.Module | None,
    probe: Probe,
    num_samples: int,
) -> dict[str, tuple[float, FeatureTerm]]:
    """`{name: (weight, FeatureTerm)}` of the checked feature terms `specs`; every layer is resolved and every pair's
    shapes checked on one probe pass of each model, so a bad name or shape fails here, in one line."""
    if not specs:
        return {}
    if teacher is None:
        raise DistillError(f"loss.terms.{next(iter(specs))}: a feature term reads the teacher's layers; load a teacher")
    for name, spec in specs.items():
        for side, model in (("student", student), ("teacher", teacher)):
            for layer in layer_list(spec[side]):
                resolve_tap(model, layer, f"loss.terms.{name}.{side}")  # names the term in the message
    readers = {
        side: LayerReader(model, [layer for spec in specs.values() for layer in layer_list(spec[side])], side)
        for side, model in (("student", student), ("teacher", teacher))
    }
    found = {
        side: probe_features(model, readers[side], probe)
        for side, model in (("student", student), ("teacher", teacher))
    }
    return {
        name: (spec["weight"], feature_term(name, spec, losses(spec["loss"]), found, num_samples))
        for name, spec in specs.items()
    }


def feature_term(
    name: str, spec: dict[str, Any], loss: type[nn.Module], found: dict[str, Captured], num_samples: int
) -> FeatureTerm:
    """One term, its loss and projectors built from the probed shapes."""
    student_layers, teacher_layers = layer_list(spec["student"]), layer_list(spec["teacher"])
    per_token = loss.consumes.kind == TOKEN_FEATURES
    student_shapes = found["student"].shapes(student_layers, per_token)
    teacher_shapes = found["teacher"].shapes(teacher_layers, per_token)
    args = {k: v for k, v in spec.items() if k not in ("loss", "weight", *LAYER_KEYS)}
    if "num_samples" in inspect.signature(loss).parameters:
        args["num_samples"] = num_samples
    try:
        if getattr(loss, "shape_arguments", ()):
            module = loss.from_shapes(student_shapes, teacher_shapes, **args)
        else:
            module = loss(**args)
    except ValueError as exc:
        raise DistillError(f"loss.terms.{name}: {exc}") from None
    projectors = None
    if getattr(loss, "needs_teacher_shape", False):
        pairs = zip(student_layers, student_shapes, teacher_layers, teacher_shapes, strict=True)
        for s_layer, s_shape, t_layer, t_shape in pairs:
            reason = can_project(s_shape, t_shape)
            if reason is not None:
                raise DistillError(
                    f"loss.terms.{name}: student {s_layer} {s_shape} cannot be mapped to teacher {t_layer} "
                    f"{t_shape}: {reason}"
                )
        # FitNet's regressor exists even between equal shapes (`always_project`); others project where they differ
        build = FeatureProjector if getattr(loss, "always_project", False) else projector_for
        projectors = [build(s, t) for s, t in zip(student_shapes, teacher_shapes, strict=True)]
    return FeatureTerm(module, student_layers, teacher_layers, projectors)

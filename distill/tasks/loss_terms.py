"""Loss terms a recipe can name under `loss.terms`, and the rules that pair them with tasks.

The loss modules live in the standalone `losses` package, which knows nothing of distill; they are registered here.
Each declares what it consumes (`losses.consumes`): a task feeds the kinds its spec accepts, or has one objective,
and a recipe that pairs a term with a task that cannot feed it is refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from distill.errors import DistillError
from distill.registry import Registry
from distill.tasks.spec import TASKS, TaskSpec
from losses import (
    AlignDistilLoss,
    AMULoss,
    AttentionTransferLoss,
    CRDLoss,
    DKDLoss,
    DPOLoss,
    DraftDistillLoss,
    GraphOnLogitsLoss,
    HiddenStateLoss,
    HintLoss,
    KDLoss,
    PKTLoss,
    PlackettLuceLoss,
    ReviewKDLoss,
    RKDLoss,
    SimilarityPreservingLoss,
    TokenDivergenceLoss,
    ZScoreKDLoss,
)
from losses.consumes import KIND_DESCRIPTIONS, KIND_INPUTS, OBJECTIVE, Consumes

LOSSES: Registry[type[nn.Module]] = Registry("loss")

LOSSES.register("kd")(KDLoss)
LOSSES.register("zscore_kd")(ZScoreKDLoss)
LOSSES.register("pld")(PlackettLuceLoss)
LOSSES.register("dkd")(DKDLoss)
LOSSES.register("gld")(GraphOnLogitsLoss)
LOSSES.register("token_kl")(TokenDivergenceLoss)
LOSSES.register("align_distil")(AlignDistilLoss)  # the objective of `task: align_distil`
LOSSES.register("dpo")(DPOLoss)  # the objective of `task: dpo`
LOSSES.register("draft_distill")(DraftDistillLoss)  # the objective of `task: draft_distill` (SpecVLM)
LOSSES.register("amu")(AMULoss)  # the objective of `task: amu` (few-shot CLIP)
# on intermediate features (distill.tasks.feature_terms): the CIFAR-100 benchmark's feature methods
LOSSES.register("fitnet")(HintLoss)
LOSSES.register("at")(AttentionTransferLoss)
LOSSES.register("sp")(SimilarityPreservingLoss)
LOSSES.register("rkd")(RKDLoss)
LOSSES.register("pkt")(PKTLoss)
LOSSES.register("crd")(CRDLoss)
LOSSES.register("reviewkd")(ReviewKDLoss)
LOSSES.register("hidden_state")(HiddenStateLoss)  # language models' layer maps

LossTerms = dict[str, tuple[float, nn.Module]]


def consumes(loss: type[nn.Module] | nn.Module, name: str) -> Consumes:
    """What the loss declares it consumes; a loss without a declaration cannot be fed and is refused."""
    declared = getattr(loss, "consumes", None)
    if not isinstance(declared, Consumes):
        raise DistillError(
            f"loss '{name}' does not declare what it consumes: give its class `consumes = Consumes(<kind>)` "
            f"from losses.consumes (kinds: {', '.join(sorted(KIND_DESCRIPTIONS))})"
        )
    return declared


def fitting_losses(spec: TaskSpec) -> list[str]:
    """The registered loss terms that `spec` can feed."""
    return [
        name for name, cls in LOSSES.items() if getattr(cls, "consumes", None) and cls.consumes.kind in spec.accepts
    ]


def objective_tasks(loss_name: str) -> list[str]:
    return [name for name, spec in TASKS.items() if spec.objective == loss_name]


def check_terms(spec: TaskSpec, terms: dict[str, dict], fail: Callable[[str, str], Exception]) -> None:
    """Refuse terms the task cannot feed (through `fail(key path, message)`), naming what would fit."""
    if spec.objective is not None:
        if [term["loss"] for term in terms.values()] != [spec.objective]:
            raise fail("loss.terms", f"of a {spec.name} recipe must be exactly one term: {spec.objective}")
        return
    for key, term in terms.items():
        declared = consumes(LOSSES.get(term["loss"]), term["loss"])
        if declared.kind in spec.accepts:
            continue
        fits = ", ".join(fitting_losses(spec)) or "none"
        if declared.kind == OBJECTIVE:
            owners = " or ".join(objective_tasks(term["loss"])) or "another task"
            raise fail(
                f"loss.terms.{key}",
                f"is {term['loss']}, the objective of task: {owners}, not a term of a {spec.name} recipe "
                f"(terms that fit: {fits})",
            )
        accepted = "; ".join(KIND_DESCRIPTIONS[k] for k in sorted(spec.accepts)) or "no distillation terms"
        raise fail(
            f"loss.terms.{key}",
            f"is {term['loss']}, which consumes {KIND_DESCRIPTIONS[declared.kind]}; task {spec.name} feeds "
            f"{accepted} (terms that fit: {fits})",
        )


def build_loss(term: dict) -> nn.Module:
    """The loss module of a checked term `{loss, weight, <arguments>}`."""
    return LOSSES.get(term["loss"])(**{k: v for k, v in term.items() if k not in ("loss", "weight")})


def build_terms(terms: dict[str, dict]) -> LossTerms:
    """`{name: (weight, module)}` of the recipe's checked `loss.terms`."""
    return {name: (term["weight"], build_loss(term)) for name, term in terms.items()}


def call_term(term: nn.Module, student: object, teacher: object, inputs: dict[str, object]) -> object:
    """`term(student, teacher, <its kind's inputs>, <its extra inputs>)` from the named `inputs` a task offers."""
    declared = term.consumes
    positional = [inputs[name] for name in KIND_INPUTS[declared.kind]]
    if not declared.extra:  # most terms: no keyword inputs to gather (a cost every step)
        return term(student, teacher, *positional)
    return term(student, teacher, *positional, **{name: inputs[name] for name in declared.extra})

"""Where a CIFAR-100 teacher can be had, said in the one-line errors that report a missing one.

The lineage's teachers (`{'model': state_dict}` checkpoints in RepDistiller's `<model>_vanilla/ckpt_epoch_240.pth`
layout) are published by mdistiller as one release archive, which `teacher.checkpoint: published` fetches; a
bundled teacher recipe trains the others (`teacher.recipe`: beside `published`, used when it cannot be fetched).
"""

from __future__ import annotations

from distill.config import bundled_recipes

MDISTILLER_RELEASE = "mdistiller's cifar_teachers.tar"
# the teachers that archive holds, as `cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth`
MDISTILLER_TEACHERS = ("resnet32x4", "resnet56", "resnet110", "vgg13", "wrn_40_2")
TRAINED_BY_DEFAULT = "teacher_resnet32x4_cifar100"  # the bundled teacher recipe others adapt by overriding the model


def train_advice(role: str, model: str, instead_of_file: bool = False) -> str:
    """The overrides that train the CIFAR-100 teacher `model` first, by a bundled teacher recipe: beside a
    published or URL checkpoint (used when it cannot be fetched), or `instead_of_file`."""
    own = f"teacher_{model}_cifar100"
    first = f"{role}.checkpoint=null " if instead_of_file else ""
    if own in bundled_recipes():
        return f"train it first: {first}{role}.recipe={own}"
    # the bundled recipe of another model, its student swapped for this one
    return f"train it first: {first}{role}.recipe={TRAINED_BY_DEFAULT} {role}.overrides=[student.name={model}]"


def missing_cifar_teacher(role: str, path: str, model: str) -> str:
    """The error for a CIFAR-100 teacher `model` whose `role.checkpoint` file `path` does not exist."""
    if model in MDISTILLER_TEACHERS:
        published = f"{role}.checkpoint=published fetches the published one ({MDISTILLER_RELEASE})"
    else:
        published = f"{MDISTILLER_RELEASE} has no {model}"
    return f"{role}.checkpoint: file not found: {path}: {published}, or {train_advice(role, model, True)}"


def unpublished_cifar_teacher(role: str, model: str) -> str:
    """The error for `role.checkpoint: published` with a model that has no published teacher."""
    return (
        f"{role}.checkpoint: no published {model}: {MDISTILLER_RELEASE} holds {', '.join(MDISTILLER_TEACHERS)}; "
        f"give a file, or {train_advice(role, model)}"
    )

"""Where a missing teacher file can be had, said in the one-line error that reports it.

The CIFAR-100 recipes point `teacher.checkpoint` at RepDistiller's download layout
(`save/models/<model>_vanilla/ckpt_epoch_240.pth`), whose download server is gone. The same files (the lineage's
`{'model': state_dict}` checkpoints) are published by mdistiller as a release asset, and a bundled teacher recipe
trains the others, so the error names both ways out.
"""

from __future__ import annotations

from distill.config import bundled_recipes

MDISTILLER_RELEASE = "cifar_teachers.tar from the 'checkpoints' release of github.com/megvii-research/mdistiller"
# the teachers that archive holds, as `cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth` once unpacked
MDISTILLER_TEACHERS = ("resnet32x4", "resnet56", "resnet110", "vgg13", "wrn_40_2")
TRAINED_BY_DEFAULT = "teacher_resnet32x4_cifar100"  # the bundled teacher recipe others adapt by overriding the model


def missing_cifar_teacher(role: str, path: str, model: str) -> str:
    """The error for a CIFAR-100 teacher `model` whose `role.checkpoint` file `path` does not exist: where the
    published file is, or how to train it with a bundled teacher recipe."""
    if model in MDISTILLER_TEACHERS:
        unpacked = f"cifar_teachers/{model}_vanilla/ckpt_epoch_240.pth"
        download = f"unpack {MDISTILLER_RELEASE} and set {role}.checkpoint={unpacked}"
    else:
        download = f"{MDISTILLER_RELEASE} has no {model}"
    own = f"teacher_{model}_cifar100"
    if own in bundled_recipes():
        train = f"{role}.checkpoint=null {role}.recipe={own}"
    else:  # the bundled recipe of another model, its student swapped for this one
        train = f"{role}.checkpoint=null {role}.recipe={TRAINED_BY_DEFAULT} {role}.overrides=[student.name={model}]"
    return f"{role}.checkpoint: file not found: {path}: {download}, or train it first: {train}"

"""The CIFAR-100 model zoo of the KD benchmark lineage (CRD/RepDistiller, mdistiller), registered in `MODELS`.

Parameter names and shapes match the lineage's code, so its published `ckpt_epoch_240.pth` teachers
(`{'model': state_dict}`) load unchanged. Every model has `forward(x) -> logits`, `forward_features(x) -> (B, D)`
(the pooled penultimate features), `num_features` (D) and `get_classifier()` (the head applied after).
"""

from distill.models.cifar import mobilenetv2, resnet, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401

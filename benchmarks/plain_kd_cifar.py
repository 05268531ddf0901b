"""A plain PyTorch script doing the work of `distill fit --recipe kd_cifar100`: the reference of fit_overhead.py.

resnet32x4 (frozen teacher, weights from a file) -> resnet8x4 on CIFAR-100 files (`<root>/cifar-100-python`), with
RandomCrop(32, padding 4) + horizontal flip + normalization per sample in the data-loader workers (kept alive across
epochs), 0.1 * CE + 0.9 * KD (T = 4), SGD (lr 0.05, momentum 0.9, wd 5e-4) with the multistep schedule
(150/180/210, gamma 0.1); per epoch a validation on the test split (student loss and accuracy, agreement with the
teacher, whose predictions are computed once) and a checkpoint (last, and best by accuracy) written atomically; at
the end the best checkpoint tested on the test split. Meant to be timed as a whole process:

    python benchmarks/plain_kd_cifar.py --root DATA --teacher teacher.pt --epochs 4 --out OUT [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)


def cifar_resnet(name: str) -> nn.Module:
    """distill's `resnet32x4` or `resnet8x4` (100 classes), imported without `distill.models`' package init: that one
    registers every model family and imports Lightning, which a plain script would not pay for."""
    import distill

    package = types.ModuleType("distill.models")
    package.__path__ = [str(Path(distill.__file__).parent / "models")]
    sys.modules.setdefault("distill.models", package)
    from distill.models.cifar import resnet

    return getattr(resnet, name)(num_classes=100)


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as file:
        content = pickle.load(file, encoding="bytes")  # our own generated files: trusted
    images = torch.from_numpy(content[b"data"].reshape(-1, 3, 32, 32).copy())
    return images, torch.tensor(content[b"fine_labels"], dtype=torch.long)


class Images(Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    log_p_s = F.log_softmax(student / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def atomic_save(state: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(
    student: nn.Module, teacher: nn.Module, loader: DataLoader, device: torch.device, teacher_preds: list | None
) -> dict[str, float]:
    """Student loss and accuracy, and agreement with the teacher; `teacher_preds` (per batch) is filled on first use."""
    student.eval()
    total = loss_sum = correct = agree = teacher_correct = 0
    fill = teacher_preds is not None and not teacher_preds
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = student(x)
        if teacher_preds is None or fill:
            t_preds = teacher(x).argmax(-1)
            teacher_correct += int((t_preds == y).sum())
            if fill:
                teacher_preds.append(t_preds)
        else:
            t_preds = teacher_preds[i]
        preds = logits.argmax(-1)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((preds == y).sum())
        agree += int((preds == t_preds).sum())
        total += len(y)
    student.train()
    return {
        "loss": loss_sum / total,
        "acc": correct / total,
        "agreement": agree / total,
        "teacher_acc": teacher_correct / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding cifar-100-python/")
    parser.add_argument("--teacher", required=True, help="resnet32x4 state dict file")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", required=True, help="folder for the checkpoints and results.json")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    folder = Path(args.root) / "cifar-100-python"
    normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    augment = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(), *normalize])
    train = Images(*load_split(folder / "train"), augment)
    test = Images(*load_split(folder / "test"), v2.Compose(normalize))
    common = {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "persistent_workers": args.workers > 0,
        "pin_memory": device.type == "cuda",
    }
    train_loader = DataLoader(train, shuffle=True, **common)
    test_loader = DataLoader(test, shuffle=False, **common)

    teacher = cifar_resnet("resnet32x4")
    teacher.load_state_dict(torch.load(args.teacher, map_location="cpu", weights_only=True))
    teacher = teacher.to(device).eval().requires_grad_(False)
    torch.manual_seed(args.seed)  # the student starts as distill's does: built right after seeding
    student = cifar_resnet("resnet8x4").to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[150, 180, 210], gamma=0.1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    best_acc, teacher_preds = -1.0, []
    for epoch in range(args.epochs):
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = student(x)
            loss = 0.1 * F.cross_entropy(logits, y) + 0.9 * kd_loss(logits, teacher_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
        val = evaluate(student, teacher, test_loader, device, teacher_preds)
        state = {
            "epoch": epoch,
            "state_dict": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }
        atomic_save(state, out / "last.ckpt")
        if val["acc"] > best_acc:
            best_acc = val["acc"]
            atomic_save(state, out / "best.ckpt")
        print(f"epoch {epoch}: val acc {val['acc']:.4f} loss {val['loss']:.4f}", flush=True)

    student.load_state_dict(torch.load(out / "best.ckpt", map_location="cpu", weights_only=True)["state_dict"])
    metrics = evaluate(student, teacher, test_loader, device, None)
    (out / "results.json").write_text(json.dumps({"test": metrics}, indent=2))
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()

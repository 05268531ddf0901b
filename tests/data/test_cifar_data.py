"""CIFAR-100 from the official python-version pickles (generated here in the same format)."""

import hashlib
import pickle
import re
import struct

import numpy as np
import pytest
import torch

import distill.data.cifar as cifar
from distill.data import CIFAR100DataModule
from distill.data.synthetic import write_fake_cifar100
from distill.errors import DistillError
from tests.helpers_download import FileServer, cifar_archive, prepare_cifar, run_in_processes

MEAN = torch.tensor(cifar.MEAN).view(3, 1, 1)
STD = torch.tensor(cifar.STD).view(3, 1, 1)


@pytest.fixture
def root(tmp_path):
    write_fake_cifar100(tmp_path, n_train=200, n_test=50, seed=0)
    return tmp_path


def read(path):
    with open(path, "rb") as file:
        return pickle.load(file)


def write(path, content, protocol=4):
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=protocol)


def test_attributes_are_known_before_the_files_exist(tmp_path):
    datamodule = CIFAR100DataModule(root=str(tmp_path / "nowhere"))
    assert (datamodule.num_classes, datamodule.in_chans, datamodule.image_size) == (100, 3, 32)


def test_loads_the_official_layout(root):
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0)
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (200, 50)
    assert datamodule.test_set is datamodule.val_set  # val = the official test split
    image, label = datamodule.train_set[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert isinstance(label, int)
    assert datamodule.class_names == [f"class_{i:02d}" for i in range(100)]
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (64, 3, 32, 32) and labels.dtype == torch.int64


def test_eval_images_are_the_file_pixels_normalized(root):
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0)
    datamodule.setup("validate")
    raw = read(root / "cifar-100-python" / "test")
    for i in (0, 49):
        image, label = datamodule.val_set[i]
        pixels = torch.from_numpy(raw[b"data"][i].reshape(3, 32, 32)).float() / 255  # CHW rows
        assert torch.allclose(image * STD + MEAN, pixels, atol=1e-5)
        assert label == raw[b"fine_labels"][i]


def test_normalization_uses_the_benchmark_statistics(root):
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0, augment=False)
    datamodule.setup("fit")
    images = torch.stack([datamodule.train_set[i][0] for i in range(200)])
    raw = torch.from_numpy(read(root / "cifar-100-python" / "train")[b"data"]).float().view(200, 3, 32, 32) / 255
    expected = (raw.mean(dim=(0, 2, 3)) - torch.tensor(cifar.MEAN)) / torch.tensor(cifar.STD)
    assert torch.allclose(images.mean(dim=(0, 2, 3)), expected, atol=1e-4)


def crops_and_flips(image: torch.Tensor) -> list[torch.Tensor]:
    """Every RandomCrop(32, padding=4) of `image`, flipped or not."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = [padded[:, y : y + 32, x : x + 32] for y in range(9) for x in range(9)]
    return crops + [crop.flip(-1) for crop in crops]


def test_augment_crops_and_flips_training_images_only(root):
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0)
    datamodule.setup("fit")
    original = torch.from_numpy(read(root / "cifar-100-python" / "train")[b"data"][0].reshape(3, 32, 32)) / 255
    candidates = crops_and_flips(original)
    torch.manual_seed(0)
    draws = [datamodule.train_set[0][0] * STD + MEAN for _ in range(8)]
    assert all(any(torch.allclose(d, c, atol=1e-5) for c in candidates) for d in draws)
    assert len({d.numpy().tobytes() for d in draws}) > 1
    assert torch.equal(datamodule.val_set[0][0], datamodule.val_set[0][0])
    plain = CIFAR100DataModule(root=str(root), num_workers=0, augment=False)
    plain.setup("fit")
    assert torch.equal(plain.train_set[0][0], plain.train_set[0][0])


def test_missing_files_without_download_say_where_and_how(tmp_path):
    datamodule = CIFAR100DataModule(root=str(tmp_path), download=False)
    with pytest.raises(DistillError) as error:
        datamodule.setup("fit")
    assert str(error.value) == (
        f"CIFAR-100 not found: expected {tmp_path.absolute()}/cifar-100-python/{{train,test}}; set data.download=true, "
        f"or download {cifar.URL} and extract it into {tmp_path.absolute()}"
    )


def test_downloads_by_default_and_offline_says_what_to_fill(tmp_path):
    datamodule = CIFAR100DataModule(root=str(tmp_path / "data"))  # the tests run with DISTILL_OFFLINE=1
    assert datamodule.download
    with pytest.raises(DistillError) as error:
        datamodule.setup("fit")
    assert str(error.value) == (
        f"CIFAR-100 ({tmp_path / 'data' / 'cifar-100-python'}): not found and downloads are off (DISTILL_OFFLINE=1): "
        f"download {cifar.URL} and extract it into {tmp_path / 'data'}"
    )
    assert not (tmp_path / "data").exists()  # nothing written


@pytest.fixture
def served_cifar(tmp_path, monkeypatch):
    """The official archive's layout, small, served on 127.0.0.1 as the CIFAR-100 address, its MD5 the published
    one."""
    monkeypatch.delenv("DISTILL_OFFLINE")
    archive = cifar_archive(tmp_path / "made", n_train=40, n_test=20)
    monkeypatch.setattr(cifar, "MD5", hashlib.md5(archive).hexdigest())
    with FileServer() as server:
        monkeypatch.setenv(cifar.URL_ENV, server.add("cifar-100-python.tar.gz", archive, cuts=1, cut_at=5000))
        yield server


def test_download_fills_the_root_once(served_cifar, tmp_path):
    root = tmp_path / "data"
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert (len(datamodule.train_set), len(datamodule.val_set)) == (40, 20)
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == ["cifar-100-python"]  # archive gone
    assert [r for _, r in served_cifar.requests] == [None, "bytes=5000-"]  # cut once, resumed
    CIFAR100DataModule(root=str(root)).prepare_data()
    assert len(served_cifar.requests) == 2  # there: not downloaded again


def test_an_archive_that_fails_its_md5_is_refused_and_nothing_is_kept(served_cifar, tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "MD5", "eb9058c3a382ffc7106e4002c42a8d85")  # the official archive's, not this one
    root = tmp_path / "data"
    with pytest.raises(DistillError) as error:
        CIFAR100DataModule(root=str(root)).prepare_data()
    found = hashlib.md5(served_cifar.files["cifar-100-python.tar.gz"].data).hexdigest()
    assert str(error.value) == (
        f"CIFAR-100 ({root / 'cifar-100-python'}): {served_cifar.url('cifar-100-python.tar.gz')} does not match its "
        f"checksum: expected md5 eb9058c3a382ffc7106e4002c42a8d85, found {found}; nothing was kept"
    )
    assert [p.name for p in root.iterdir() if not p.name.endswith(".lock")] == []  # only the (hidden) locks


def test_two_processes_download_it_once(served_cifar, tmp_path):
    served_cifar.files["cifar-100-python.tar.gz"].delay = 1.0  # the first is still downloading when the second asks
    root = tmp_path / "data"
    results = run_in_processes(prepare_cifar, [(str(root),), (str(root),)])
    assert results == [40, 40]
    assert served_cifar.count("cifar-100-python.tar.gz") == 2  # one download: cut once, resumed once


def test_existing_files_are_not_downloaded_again(root, monkeypatch):
    monkeypatch.setattr(cifar, "fetch", lambda *a, **k: pytest.fail("downloaded"))
    CIFAR100DataModule(root=str(root), download=True).prepare_data()


def test_reads_str_keys_as_well(root):
    for name in ("train", "test", "meta"):
        path = root / "cifar-100-python" / name
        content = read(path)
        write(path, {key.decode(): value for key, value in content.items()})
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0)
    datamodule.setup("fit")
    assert len(datamodule.train_set) == 200 and datamodule.class_names[1] == "class_01"


def test_reads_pickle_protocol_5(root):
    path = root / "cifar-100-python" / "train"
    write(path, read(path), protocol=5)
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0)
    datamodule.setup("fit")
    assert len(datamodule.train_set) == 200


def py2_str(text: bytes) -> bytes:
    """Pickle opcodes of a Python 2 `str` (SHORT_BINSTRING / BINSTRING)."""
    return b"U" + bytes([len(text)]) + text if len(text) < 256 else b"T" + struct.pack("<i", len(text)) + text


def py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A protocol-2 pickle as Python 2 with numpy 1.x wrote the official files: str keys, numpy.core globals."""
    shape = b"".join(b"J" + struct.pack("<i", n) for n in data.shape)
    minus_one = b"J" + struct.pack("<i", -1)
    dtype = b"cnumpy\ndtype\n(" + py2_str(b"u1") + b"K\x00K\x01tR(K\x03" + py2_str(b"|") + b"NNN"
    dtype += minus_one + minus_one + b"K\x00tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + py2_str(b"b") + b"\x87R"
    array += b"(K\x01(" + shape + b"t" + dtype + b"\x89" + py2_str(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(b"K" + bytes([label]) for label in labels) + b"e"
    return b"\x80\x02}(" + py2_str(b"data") + array + py2_str(b"fine_labels") + label_list + b"u."


def test_reads_python2_pickles(root):
    for name in ("train", "test"):
        path = root / "cifar-100-python" / name
        content = read(path)
        path.write_bytes(py2_pickle(content[b"data"], content[b"fine_labels"]))
    datamodule = CIFAR100DataModule(root=str(root), num_workers=0, augment=False)
    datamodule.setup("fit")
    fresh = CIFAR100DataModule(root=str(root), num_workers=0)
    write_fake_cifar100(root, n_train=200, n_test=50, seed=0)
    fresh.setup("fit")
    assert torch.equal(datamodule.val_set[7][0], fresh.val_set[7][0])
    assert datamodule.train_set[9][1] == fresh.train_set[9][1]


EXECUTED = []


def payload():
    EXECUTED.append(True)
    return np.zeros((1, 3072), dtype=np.uint8)


class Malicious:
    def __reduce__(self):
        return (payload, ())


def test_refuses_pickles_that_would_run_code(root):
    path = root / "cifar-100-python" / "train"
    write(path, {b"data": Malicious(), b"fine_labels": [0]})
    read(path)  # a plain unpickler runs the payload: the file is really malicious
    assert EXECUTED == [True]
    EXECUTED.clear()
    datamodule = CIFAR100DataModule(root=str(root))
    with pytest.raises(DistillError, match=f"refusing to unpickle {__name__}.payload from {re.escape(str(path))}"):
        datamodule.setup("fit")
    assert EXECUTED == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({b"fine_labels": [100] * 200}, r"fine_labels must be integers in \[0, 100\)"),
        ({b"data": np.zeros((200, 3000), dtype=np.uint8)}, r"'data' must be uint8 of shape \[N, 3072\]"),
        ({b"data": np.zeros((199, 3072), dtype=np.uint8)}, "199 images but 200 fine_labels"),
    ],
)
def test_bad_content_names_the_file(root, change, message):
    path = root / "cifar-100-python" / "train"
    write(path, {**read(path), **change})
    with pytest.raises(DistillError, match=re.escape(str(path)) + ".*" + message):
        CIFAR100DataModule(root=str(root)).setup("fit")


def test_truncated_file_names_the_file(root):
    path = root / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DistillError, match=f"cannot read {re.escape(str(path))}"):
        CIFAR100DataModule(root=str(root)).setup("fit")

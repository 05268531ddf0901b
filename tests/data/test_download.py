"""Downloads (distill/data/download.py) against a server on 127.0.0.1: whole, checked, resumed, or refused in one
line with nothing half-written."""

from __future__ import annotations

import hashlib
import re
import socket

import pytest

from distill.data.download import Unreachable, extract_folder, extract_member, fetch
from distill.errors import DistillError
from tests.helpers_download import FileServer, tar_bytes

DATA = bytes(range(256)) * 400  # 102,400 bytes
MD5 = hashlib.md5(DATA).hexdigest()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("DISTILL_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with FileServer() as running:
        yield running


def get(url, dest, **kwargs):
    return fetch(url, dest, what="the file", fill=f"download {url} to {dest}", **kwargs)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))  # locks stay, hidden


def test_a_download_lands_whole_and_checked(server, tmp_path):
    url = server.add("data.bin", DATA)
    assert get(url, tmp_path / "data.bin", checksum=("md5", MD5)) == tmp_path / "data.bin"
    assert (tmp_path / "data.bin").read_bytes() == DATA and leftovers(tmp_path) == ["data.bin"]
    get(url, tmp_path / "data.bin")  # there already: not fetched again
    assert server.requests == [("data.bin", None)]


def test_a_checksum_mismatch_is_refused_and_nothing_is_kept(server, tmp_path):
    url = server.add("data.bin", DATA[::-1])  # other bytes than the published checksum's
    found = hashlib.md5(DATA[::-1]).hexdigest()
    with pytest.raises(DistillError) as error:
        get(url, tmp_path / "data.bin", checksum=("md5", MD5))
    assert str(error.value) == (
        f"the file: {url} does not match its checksum: expected md5 {MD5}, found {found}; nothing was kept"
    )
    assert not isinstance(error.value, Unreachable)  # the address answered, wrongly: no fallback
    assert leftovers(tmp_path) == []


def test_a_transfer_cut_short_is_resumed_by_a_range_request(server, tmp_path):
    url = server.add("data.bin", DATA, cuts=1, cut_at=30_000)
    get(url, tmp_path / "data.bin", checksum=("md5", MD5))
    assert (tmp_path / "data.bin").read_bytes() == DATA
    assert server.requests == [("data.bin", None), ("data.bin", "bytes=30000-")]


def test_a_server_that_ignores_range_restarts_the_file_cleanly(server, tmp_path):
    url = server.add("data.bin", DATA, cuts=1, cut_at=30_000, ignore_range=True)
    get(url, tmp_path / "data.bin", checksum=("md5", MD5))
    assert (tmp_path / "data.bin").read_bytes() == DATA  # not the first 30,000 bytes twice
    assert server.requests == [("data.bin", None), ("data.bin", "bytes=30000-")]


def test_a_part_left_by_an_interrupted_run_is_resumed(server, tmp_path):
    url = server.add("data.bin", DATA)
    (tmp_path / "data.bin.part").write_bytes(DATA[:50_000])
    get(url, tmp_path / "data.bin", checksum=("md5", MD5))
    assert (tmp_path / "data.bin").read_bytes() == DATA and leftovers(tmp_path) == ["data.bin"]
    assert server.requests == [("data.bin", "bytes=50000-")]


def test_a_part_longer_than_the_file_starts_over(server, tmp_path):
    url = server.add("data.bin", DATA)
    (tmp_path / "data.bin.part").write_bytes(DATA + b"stale")
    get(url, tmp_path / "data.bin", checksum=("md5", MD5))
    assert (tmp_path / "data.bin").read_bytes() == DATA
    assert server.requests == [("data.bin", f"bytes={len(DATA) + 5}-"), ("data.bin", None)]


def test_a_transfer_cut_every_time_keeps_its_part_for_the_next_run(server, tmp_path):
    url = server.add("data.bin", DATA, cuts=3, cut_at=10_000)
    with pytest.raises(Unreachable, match=r"^the file: the download of .* was cut short 3 times .*run again to resume"):
        get(url, tmp_path / "data.bin")
    assert not (tmp_path / "data.bin").exists() and (tmp_path / "data.bin.part").stat().st_size == 30_000
    get(url, tmp_path / "data.bin", checksum=("md5", MD5))  # the next run resumes where it stopped
    assert server.requests[-1] == ("data.bin", "bytes=30000-")


def test_no_network_is_one_line_naming_the_address_and_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILL_OFFLINE")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/data.bin"
    with pytest.raises(Unreachable) as error:
        get(url, tmp_path / "data.bin")
    message = str(error.value)
    assert re.fullmatch(rf"the file: cannot download {re.escape(url)} \(.*refused.*\): download .* to .*", message)
    assert "\n" not in message and leftovers(tmp_path) == []


def test_offline_nothing_is_tried_or_written(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_OFFLINE", "1")  # as every test has it, said here
    with pytest.raises(Unreachable) as error:
        get("http://127.0.0.1:9/data.bin", tmp_path / "sub" / "data.bin")
    assert str(error.value) == (
        f"the file: not found and downloads are off (DISTILL_OFFLINE=1): download http://127.0.0.1:9/data.bin to "
        f"{tmp_path / 'sub' / 'data.bin'}"
    )
    assert not (tmp_path / "sub").exists()
    monkeypatch.delenv("DISTILL_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Unreachable, match=r"downloads are off \(HF_HUB_OFFLINE=1\)"):
        get("http://127.0.0.1:9/data.bin", tmp_path / "data.bin")


def test_an_archive_is_extracted_whole_or_not_at_all(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes({"top/one": b"1", "top/two": b"2"}, gzip=True))
    extract_folder(archive, tmp_path / "out" / "top", "the data")
    assert sorted(p.name for p in (tmp_path / "out" / "top").iterdir()) == ["one", "two"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["top"]  # no scratch folder left

    (tmp_path / "other").mkdir()
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:60])
    with pytest.raises(DistillError, match=r"^the data: cannot extract .*cut.tar.gz .*delete it and run again"):
        extract_folder(truncated, tmp_path / "other" / "top", "the data")
    assert not (tmp_path / "other" / "top").exists() and list((tmp_path / "other").iterdir()) == []


def test_an_archive_fills_only_what_a_folder_lacks(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes({"top/one": b"new", "top/two": b"2"}))
    (tmp_path / "top").mkdir()
    (tmp_path / "top" / "one").write_bytes(b"mine")
    extract_folder(archive, tmp_path / "top", "the data")
    assert (tmp_path / "top" / "one").read_bytes() == b"mine" and (tmp_path / "top" / "two").read_bytes() == b"2"


def test_one_member_of_an_archive(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes({"./dir/wanted.pth": b"yes", "dir/other.pth": b"no"}))
    assert extract_member(archive, "dir/wanted.pth", tmp_path / "got.pth", "w").read_bytes() == b"yes"
    with pytest.raises(DistillError, match=r"^w: .*a.tar has no member dir/missing.pth$"):
        extract_member(archive, "dir/missing.pth", tmp_path / "none.pth", "w")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "got.pth"]
    # under another top folder than expected: found by its own folder and name, when only one matches
    assert extract_member(archive, "top/dir/wanted.pth", tmp_path / "also.pth", "w").read_bytes() == b"yes"

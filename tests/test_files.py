"""`tnsearch.files`: atomic writes (a reader never sees half a file)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from tnsearch import files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_text_writes_the_whole_file_with_the_umask_permissions(tmp_path):
    path = tmp_path / "out.txt"
    text = "héllo\n" * 1000
    assert files.write_text(path, text) == path
    assert path.read_text(encoding="utf-8") == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert list(tmp_path.iterdir()) == [path]


def test_write_text_accepts_a_str_path_and_makes_the_folder(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    returned = files.write_text(str(path), "{}")
    assert isinstance(returned, Path) and returned == path
    assert path.read_text() == "{}"
    assert _leftovers(path.parent) == []


def test_write_text_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old and longer content")
    files.write_text(path, "new")
    assert path.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_atomic_path_is_a_hidden_temp_file_beside_the_target(tmp_path):
    path = tmp_path / "report.csv"
    with files.atomic_path(path) as tmp:
        assert tmp.parent == path.parent
        assert tmp.name.startswith(".report.csv.") and tmp.name.endswith(".tmp")
        assert tmp.exists()
        assert not path.exists()  # nothing at the target until the block ends
        tmp.write_bytes(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert not tmp.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()


def test_an_error_in_the_block_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="half way"), files.atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("half way")
    assert path.read_text() == "old"
    assert not tmp.exists()
    assert _leftovers(tmp_path) == []


def test_an_interrupt_in_the_block_removes_the_temp_and_leaves_no_file(tmp_path):
    path = tmp_path / "new.txt"
    with pytest.raises(KeyboardInterrupt), files.atomic_path(path) as tmp:
        tmp.write_text("partial")
        raise KeyboardInterrupt
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_the_block_may_replace_the_temp_file_itself(tmp_path):
    # Writers such as matplotlib or torch.save may recreate the file at `tmp`.
    path = tmp_path / "out.bin"
    with files.atomic_path(path) as tmp:
        tmp.unlink()
        tmp.write_bytes(b"recreated")
    assert path.read_bytes() == b"recreated"
    assert _leftovers(tmp_path) == []


def test_two_writers_to_one_path_do_not_collide(tmp_path):
    path = tmp_path / "shared.txt"
    both_inside = threading.Barrier(2, timeout=10)
    temps: dict[int, Path] = {}
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with files.atomic_path(path) as tmp:
                temps[i] = tmp
                tmp.write_text(f"writer {i}\n" * 10000)
                both_inside.wait()  # both temporary files exist at once
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    assert temps[0] != temps[1]
    assert path.read_text() in {f"writer {i}\n" * 10000 for i in range(2)}
    assert _leftovers(tmp_path) == []
    assert list(tmp_path.iterdir()) == [path]


def test_many_concurrent_write_text_calls_leave_one_whole_file(tmp_path):
    path = tmp_path / "many.txt"
    texts = [f"{i}:" + str(i) * 5000 for i in range(8)]
    threads = [threading.Thread(target=files.write_text, args=(path, t)) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert path.read_text() in texts
    assert list(tmp_path.iterdir()) == [path]

import os

import pytest

from unified_pipeline import atomic
from unified_pipeline.hashing import HashCache, dataset_version
from unified_pipeline.paths import check_name, inside


def make_dataset(root, files):
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_one_changed_file_changes_exactly_one_data_version(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_dataset(a, {"x/1.bin": b"1", "x/2.bin": b"2"})
    make_dataset(b, {"y/1.bin": b"3"})
    cache = HashCache(tmp_path / "cache.sqlite")
    before = {d: dataset_version(d, cache)[0] for d in (a, b)}
    (a / "x" / "2.bin").write_bytes(b"changed")
    after = {d: dataset_version(d, cache)[0] for d in (a, b)}
    assert after[a] != before[a] and after[b] == before[b]


@pytest.mark.parametrize("change", ["add", "remove", "rename"])
def test_adding_removing_renaming_changes_version(tmp_path, change):
    make_dataset(tmp_path, {"c/1.bin": b"1", "c/2.bin": b"2"})
    v0, _ = dataset_version(tmp_path)
    if change == "add":
        (tmp_path / "c" / "3.bin").write_bytes(b"3")
    elif change == "remove":
        (tmp_path / "c" / "2.bin").unlink()
    else:
        (tmp_path / "c" / "2.bin").rename(tmp_path / "c" / "9.bin")
    assert dataset_version(tmp_path)[0] != v0


def test_cache_hits_skip_reading_unchanged_files(tmp_path, monkeypatch):
    make_dataset(tmp_path / "d", {f"c/{i}.bin": bytes([i]) for i in range(20)})
    cache = HashCache(tmp_path / "cache.sqlite")
    v1, _ = dataset_version(tmp_path / "d", cache)
    import unified_pipeline.hashing as hashing

    calls = []
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or "x")
    v2, _ = dataset_version(tmp_path / "d", HashCache(tmp_path / "cache.sqlite"))
    assert v1 == v2 and calls == []


def test_new_hashes_are_stored_in_one_transaction(tmp_path):
    make_dataset(tmp_path / "d", {f"c/{i}.bin": bytes([i]) for i in range(20)})
    cache = HashCache(tmp_path / "cache.sqlite")
    statements = []
    cache._db().set_trace_callback(statements.append)
    dataset_version(tmp_path / "d", cache)
    writes = [s.split()[0] for s in statements if not s.startswith("SELECT")]
    # in autocommit each INSERT would commit on its own (a disk sync per file)
    assert writes == ["BEGIN", *["INSERT"] * 20, "COMMIT"], writes
    assert dataset_version(tmp_path / "d", HashCache(tmp_path / "cache.sqlite"))[0] == dataset_version(tmp_path / "d")[0]


def test_cache_rehashes_a_file_whose_mtime_changed(tmp_path):
    make_dataset(tmp_path / "d", {"c/1.bin": b"aaaa"})
    cache = HashCache(tmp_path / "cache.sqlite")
    v1, _ = dataset_version(tmp_path / "d", cache)
    f = tmp_path / "d" / "c" / "1.bin"
    st = f.stat()
    f.write_bytes(b"bbbb")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert dataset_version(tmp_path / "d", cache)[0] != v1


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "f.json"
    atomic.write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("disk full")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_dir_is_all_or_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic.atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a").write_text("a")
            raise ValueError("boom")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "out" / "a").read_text() == "a"


def test_disk_full_during_write_keeps_previous_file(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "keep.txt"
    atomic.write_text(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "A", "1abc", "x" * 65, "a.b"])
def test_names_cannot_carry_paths(bad):
    with pytest.raises(ValueError):
        check_name(bad)


def test_inside_refuses_escape(tmp_path):
    assert inside(tmp_path, "a/b") == (tmp_path / "a" / "b").resolve()
    for bad in ["../etc/passwd", "/etc/passwd", "a/../../x"]:
        with pytest.raises(ValueError):
            inside(tmp_path, bad)

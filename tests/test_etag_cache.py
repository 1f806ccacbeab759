"""The folder bucket's ETag cache on its own: hits, misses, and a cache that cannot be used."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import infra.storage.etag_cache as ec
from infra.storage.etag_cache import EtagCache, FileStat, hash_stable


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def listed(root: Path, *names: str) -> list[tuple[str, Path, FileStat]]:
    """What a listing hands the cache: (key, path, stat) per file."""
    return [(n, root / n, FileStat.of(os.stat(root / n))) for n in names]


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths the cache actually read, in order."""
    seen: list[Path] = []
    real = ec.hash_stable

    def counting(path: Path) -> tuple[str, FileStat, bool] | None:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(ec, "hash_stable", counting)
    return seen


@pytest.fixture
def files(tmp_path: Path) -> Path:
    root = tmp_path / "bucket"
    root.mkdir()
    (root / "a").write_bytes(b"alpha")
    (root / "b").write_bytes(b"bravo")
    return root


def cache_at(tmp_path: Path) -> EtagCache:
    return EtagCache(tmp_path / "state" / "etag-cache.sqlite3")


def test_unchanged_files_are_hashed_once(files: Path, tmp_path: Path, hashed: list[Path]) -> None:
    cache = cache_at(tmp_path)
    first = cache.etags("", listed(files, "a", "b"))
    assert {k: etag for k, (etag, _) in first.items()} == {"a": md5(b"alpha"), "b": md5(b"bravo")}
    assert sorted(p.name for p in hashed) == ["a", "b"]
    # Same (size, mtime, inode, ctime): answered from the cache, by another instance too.
    again = cache_at(tmp_path).etags("", listed(files, "a", "b"))
    assert again == first
    assert len(hashed) == 2


def test_a_changed_file_is_hashed_again(files: Path, tmp_path: Path, hashed: list[Path]) -> None:
    cache = cache_at(tmp_path)
    cache.etags("", listed(files, "a", "b"))
    # Same size, new bytes: the mtime (and ctime) moved.
    (files / "a").write_bytes(b"ALPHA")
    st = os.stat(files / "a")
    os.utime(files / "a", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    now = cache.etags("", listed(files, "a", "b"))
    assert now["a"][0] == md5(b"ALPHA") and now["b"][0] == md5(b"bravo")
    assert [p.name for p in hashed[2:]] == ["a"]
    # Replaced by another file (a rename over it): a new inode.
    (files / "new").write_bytes(b"bravo")
    os.replace(files / "new", files / "b")
    cache.etags("", listed(files, "a", "b"))
    assert [p.name for p in hashed[3:]] == ["b"]


@pytest.mark.parametrize("field", ["size", "mtime_ns", "inode", "ctime_ns"])
def test_every_stat_field_is_part_of_the_key(
    files: Path, tmp_path: Path, hashed: list[Path], field: str
) -> None:
    cache = cache_at(tmp_path)
    [(key, path, st)] = listed(files, "a")
    cache.etags("", [(key, path, st)])
    other = dataclasses.replace(st, **{field: getattr(st, field) + 1})
    cache.etags("", [(key, path, other)])
    assert len(hashed) == 2


def test_forgotten_and_kept_entries(files: Path, tmp_path: Path, hashed: list[Path]) -> None:
    cache = cache_at(tmp_path)
    cache.etags("", listed(files, "a", "b"))
    # A listing after "a" did not look at "a": its entry stays.
    cache.etags("", listed(files, "b"), start_after="a")
    assert set(cache.load("")) == {"a", "b"}
    # A listing that no longer finds "b" (deleted, or now a temp file) forgets it.
    cache.etags("", listed(files, "a"))
    assert set(cache.load("")) == {"a"}
    # Only the listed prefix is pruned.
    (files / "c").write_bytes(b"charlie")
    cache.etags("", listed(files, "a", "c"))
    cache.etags("c", [])
    assert set(cache.load("")) == {"a"}


def test_vanished_and_unsettled_files(
    files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = cache_at(tmp_path)
    entries = listed(files, "a", "b")
    (files / "b").unlink()  # deleted between the scan and the hashing
    assert set(cache.etags("", entries)) == {"a"}

    # A file still being written (its stat moved while hashing) is answered, not cached.
    def unsettled(path: Path) -> tuple[str, FileStat, bool] | None:
        res = hash_stable(path)
        assert res is not None
        return res[0], res[1], False

    monkeypatch.setattr(ec, "hash_stable", unsettled)
    (files / "c").write_bytes(b"charlie")
    out = cache_at(tmp_path).etags("", listed(files, "a", "c"))
    assert out["c"][0] == md5(b"charlie")
    assert set(cache.load("")) == {"a"}


def test_hash_stable(files: Path) -> None:
    res = hash_stable(files / "a")
    assert res is not None
    etag, st, stable = res
    assert (etag, st.size, stable) == (md5(b"alpha"), 5, True)
    assert st == FileStat.of(os.stat(files / "a"))
    assert hash_stable(files / "missing") is None
    assert hash_stable(files) is None  # a folder


def warnings(logs: list[dict[str, object]]) -> list[object]:
    return [e["event"] for e in logs if e["log_level"] == "warning"]


def test_corrupt_database_is_replaced_once(files: Path, tmp_path: Path, hashed: list[Path]) -> None:
    cache = cache_at(tmp_path)
    cache.path.parent.mkdir()
    cache.path.write_bytes(b"not a database" * 100)
    with capture_logs() as logs:
        out = cache.etags("", listed(files, "a", "b"))
        cache.etags("", listed(files, "a", "b"))
    assert out["a"][0] == md5(b"alpha")
    assert warnings(logs) == ["etag_cache_reset"]
    assert len(hashed) == 2  # the fresh database served the second listing
    conn = sqlite3.connect(cache.path)
    assert conn.execute("SELECT count(*) FROM etags").fetchone() == (2,)
    conn.close()


def test_locked_database_degrades_to_hashing(
    files: Path, tmp_path: Path, hashed: list[Path]
) -> None:
    cache = cache_at(tmp_path)
    cache.etags("", [])  # creates the database
    holder = sqlite3.connect(cache.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with capture_logs() as logs:
            first = cache.etags("", listed(files, "a", "b"))
            second = cache.etags("", listed(files, "a", "b"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert first == second
    assert first["b"][0] == md5(b"bravo")
    assert len(hashed) == 4  # nothing could be stored, so everything was read twice
    assert warnings(logs) == ["etag_cache_unusable"]  # once per cache, not per listing
    # Lock released: the cache works again.
    cache.etags("", listed(files, "a", "b"))
    cache.etags("", listed(files, "a", "b"))
    assert len(hashed) == 6


def test_unopenable_database_degrades_to_hashing(files: Path, tmp_path: Path) -> None:
    cache = cache_at(tmp_path)
    cache.path.mkdir(parents=True)  # a folder where the file should be
    with capture_logs() as logs:
        out = cache.etags("", listed(files, "a", "b"))
        cache.etags("", listed(files, "a", "b"))
        cache.store({"a": (FileStat(1, 2, 3, 4), "x")}, ["b"])
    assert {k: etag for k, (etag, _) in out.items()} == {"a": md5(b"alpha"), "b": md5(b"bravo")}
    assert cache.load("") == {}
    assert warnings(logs) == ["etag_cache_unusable"]

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from sinklens import cache


def test_failed_build_publishes_nothing(tmp_path):
    final = tmp_path / "asset"

    def broken(d: Path):
        (d / "half.bin").write_bytes(b"x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        cache.build_once(final, broken)
    assert not final.exists()
    assert not list(tmp_path.glob("asset.tmp-*"))


def test_incomplete_folder_is_rebuilt_not_used(tmp_path):
    final = tmp_path / "asset"
    final.mkdir()
    (final / "stale.bin").write_bytes(b"half")  # no COMPLETE marker
    cache.build_once(final, lambda d: (d / "good.bin").write_bytes(b"ok"))
    assert (final / "good.bin").exists() and not (final / "stale.bin").exists()
    assert cache.is_complete(final)


def _slow_build(final: str, log: str) -> None:
    def build(d: Path):
        with open(log, "a") as fh:
            fh.write("built\n")
        time.sleep(0.5)
        (d / "data").write_text("ok")

    cache.build_once(Path(final), build)


def test_concurrent_builds_build_once_and_never_see_half(tmp_path):
    final, log = tmp_path / "asset", tmp_path / "log"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_slow_build, args=(str(final), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert log.read_text().count("built") == 1
    assert (final / "data").read_text() == "ok"


def test_unwritable_cache_gives_a_clear_message(tmp_path, monkeypatch):
    if os.geteuid() == 0:
        target = Path("/proc/sinklens-cache")  # not creatable even by root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "cache"
    monkeypatch.setenv("SINKLENS_CACHE", str(target))
    with pytest.raises(cache.CacheError, match="SINKLENS_CACHE"):
        cache.cache_dir()


def test_a_cache_folder_without_write_permission_gives_a_clear_message(tmp_path, monkeypatch):
    """Root ignores permission bits (the CI machine runs as root), so the permission check is
    exercised by making os.access report the folder unwritable, as it would for a normal user."""
    monkeypatch.setenv("SINKLENS_CACHE", str(tmp_path))
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)
    with pytest.raises(cache.CacheError, match="not writable.*SINKLENS_CACHE"):
        cache.cache_dir()

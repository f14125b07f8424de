"""One engine cache shared by several processes: two processes that need the same engine at once
build it once and both load the same, complete entry (20 times in a row); a reader that meets a
half-committed entry waits for it instead of using or rebuilding it. The builder is a function
passed in (as the tensorrt backend passes engine_builder.build_engine), here a fast stand-in, and
once the real TensorRT for RTX builder."""

from __future__ import annotations

import functools
import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from panoptic_ros.runtime.atomic_files import exclusive_lock
from panoptic_ros.runtime.backends.model_info import read_onnx_info
from panoptic_ros.runtime.engine_cache import (
    CacheEntry,
    EngineKey,
    Sidecar,
    cached_engine_path,
    file_sha256,
    load_or_build,
    lock_path,
    write_engine,
)

MODELS = Path(__file__).resolve().parents[1] / "models"
ONNX = MODELS / "psn.onnx"
# Children forked from a clean server process, not from pytest's (whose threads, from other tests,
# can hold locks that a plain fork copies); the preload keeps each start to milliseconds.
FORK = multiprocessing.get_context("forkserver")
FORK.set_forkserver_preload(["panoptic_ros.runtime.engine_cache", "panoptic_ros.runtime.backends.model_info"])


def key_for(onnx_path: Path, module: str = "stand-in", version: str = "1.0") -> EngineKey:
    return EngineKey(file_sha256(onnx_path), module, version, "test GPU", "0.0", "fp32")


def stand_in_build(engine_path: Path, timing_cache: Path, *, onnx_path: Path, key: EngineKey, log: Path) -> None:
    """Writes an entry whose engine bytes are this process's own, and counts the build."""
    with open(log, "a") as f:  # one short append per build: atomic on a local file system
        f.write(f"{os.getpid()}\n")
    engine_bytes = f"engine built by process {os.getpid()}".encode() * 1000
    sidecar = Sidecar(key, hashlib.sha256(engine_bytes).hexdigest(), read_onnx_info(onnx_path), {})
    write_engine(engine_path, engine_bytes, sidecar)


def load_digest(engine_bytes: bytes, path: Path) -> str:
    return hashlib.sha256(engine_bytes).hexdigest()


def _race(barrier, results, onnx_path: Path, key: EngineKey, build, cache_dir: Path) -> None:
    barrier.wait()  # both processes ask for the engine at the same moment
    _, sidecar, loaded = load_or_build(onnx_path, key, load_digest, build, cache_dir=cache_dir)
    results.put((sidecar.engine_sha256, loaded))


def race_two_processes(onnx_path: Path, key: EngineKey, build, cache_dir: Path) -> list[tuple[str, str]]:
    barrier, results = FORK.Barrier(2), FORK.Queue()
    processes = [FORK.Process(target=_race, args=(barrier, results, onnx_path, key, build, cache_dir))
                 for _ in range(2)]
    for process in processes:
        process.start()
    outcome = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join()
        assert process.exitcode == 0
    return outcome


def test_two_processes_build_once_and_load_one_consistent_entry(tmp_path):
    key = key_for(ONNX)
    info = read_onnx_info(ONNX)
    for trial in range(20):
        cache_dir, log = tmp_path / f"cache{trial}", tmp_path / f"builds{trial}.log"
        build = functools.partial(stand_in_build, onnx_path=ONNX, key=key, log=log)
        outcome = race_two_processes(ONNX, key, build, cache_dir)
        assert len(log.read_text().split()) == 1, f"trial {trial}: more than one build"
        (sidecar_hash, loaded), other = outcome
        assert other == (sidecar_hash, loaded) and sidecar_hash == loaded  # both loaded the committed engine
        entry = CacheEntry.read(cached_engine_path(cache_dir, ONNX, key))
        assert entry.problems(key, info) == [] and entry.sidecar.engine_sha256 == sidecar_hash


def _read_during_commit(started, results, onnx_path: Path, key: EngineKey, cache_dir: Path, log: Path) -> None:
    started.set()
    build = functools.partial(stand_in_build, onnx_path=onnx_path, key=key, log=log)
    _, sidecar, loaded = load_or_build(onnx_path, key, load_digest, build, cache_dir=cache_dir)
    results.put((sidecar.engine_sha256, loaded))


def test_a_reader_waits_for_a_half_committed_entry_instead_of_rebuilding(tmp_path):
    key, log = key_for(ONNX), tmp_path / "builds.log"
    engine_path = cached_engine_path(tmp_path, ONNX, key)
    info = read_onnx_info(ONNX)
    old, new = b"old engine" * 100, b"new engine" * 100
    write_engine(engine_path, old, Sidecar(key, hashlib.sha256(old).hexdigest(), info, {}))
    started, results = FORK.Event(), FORK.Queue()
    with exclusive_lock(lock_path(engine_path)):  # a writer in the middle of its commit
        engine_path.write_bytes(new)  # new engine beside the old sidecar: not committed yet
        reader = FORK.Process(target=_read_during_commit, args=(started, results, ONNX, key, tmp_path, log))
        reader.start()
        assert started.wait(60)
        write_engine(engine_path, new, Sidecar(key, hashlib.sha256(new).hexdigest(), info, {}))  # the commit
    sidecar_hash, loaded = results.get(timeout=60)
    reader.join()
    assert not log.exists()  # the reader built nothing
    assert sidecar_hash == loaded == hashlib.sha256(new).hexdigest()


def test_refusal_when_building_is_not_allowed_names_the_command(tmp_path):
    key = key_for(ONNX)
    with pytest.raises(RuntimeError, match="building is disabled here. Build it with: panoptic-ros build-engine"):
        load_or_build(ONNX, key, load_digest, None, cache_dir=tmp_path)


def test_a_fresh_build_that_does_not_fit_is_an_error_not_a_loop(tmp_path):
    key, log = key_for(ONNX), tmp_path / "builds.log"
    wrong_key = key_for(ONNX, version="2.0")
    build = functools.partial(stand_in_build, onnx_path=ONNX, key=wrong_key, log=log)
    with pytest.raises(RuntimeError, match="the engine just built .* is not usable: tensorrt_version"):
        load_or_build(ONNX, key, load_digest, build, cache_dir=tmp_path)
    assert len(log.read_text().split()) == 1


@pytest.mark.tensorrt_rtx
def test_two_processes_share_one_real_tensorrt_rtx_build(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    from panoptic_ros.runtime.engine_builder import build_engine

    key = key_for(ONNX, trt.__name__, trt.__version__)
    gpu = (key.gpu_name, key.compute_capability)

    build = functools.partial(_rtx_build, trt_module=trt.__name__, gpu=gpu, builder=build_engine)
    outcome = race_two_processes(ONNX, key, build, tmp_path)
    assert outcome[0] == outcome[1] and outcome[0][0] == outcome[0][1]
    entry = CacheEntry.read(cached_engine_path(tmp_path, ONNX, key))
    assert entry.problems(key, read_onnx_info(ONNX)) == []
    assert entry.sidecar.build["strongly_typed"] and entry.sidecar.key.tensorrt_module == "tensorrt_rtx_bindings"
    assert len(list(tmp_path.glob("*.engine"))) == 1 and not list(tmp_path.glob(".*.tmp"))


def _rtx_build(engine_path: Path, timing_cache: Path, *, trt_module: str, gpu, builder) -> None:
    import importlib

    builder(ONNX, engine_path, "fp32", timing_cache=timing_cache, trt=importlib.import_module(trt_module), gpu=gpu)


def _hold_until(release) -> None:
    release.wait(60)


def test_leaving_the_lock_releases_it_while_a_forked_child_still_holds_the_file(tmp_path):
    """A process forked inside the locked block shares the locked file; leaving the block must
    still free the lock for everyone else (close alone would not: flock belongs to the open file)."""
    import fcntl

    path = tmp_path / "entry.lock"
    plain_fork, release = multiprocessing.get_context("fork"), None
    with exclusive_lock(path):
        release = plain_fork.Event()
        child = plain_fork.Process(target=_hold_until, args=(release,))
        child.start()
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if still held
    finally:
        os.close(fd)
        release.set()
        child.join()
    assert child.exitcode == 0

"""Engine cache: keys, sidecars, staleness and the load/build/refuse decision, with the TensorRT
facts as plain inputs (no TensorRT here)."""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from panoptic_ros.classes import CITYSCAPES, SYNTHETIC
from panoptic_ros.runtime.backends.model_info import ModelInfo, contract_specs
from panoptic_ros.runtime.engine_cache import (
    BUILDER_RECIPE,
    CACHE_ENV,
    Action,
    CacheEntry,
    EngineKey,
    Sidecar,
    build_command,
    cached_engine_path,
    check_precision,
    decide,
    default_cache_dir,
    file_sha256,
    read_sidecar,
    refusal_message,
    sidecar_path,
    timing_cache_path,
    write_engine,
)

KEY = EngineKey(onnx_sha256="ab" * 32, tensorrt_module="tensorrt", tensorrt_version="8.6.2.3", gpu_name="Orin",
                compute_capability="8.7", precision="fp16")
ENGINE_BYTES = b"serialized engine bytes \x00\x01\x02"


def info(height: int = 256, width: int = 512, label_set=SYNTHETIC, k: int = 100) -> ModelInfo:
    inputs, outputs = contract_specs(height, width, k + len(label_set.stuff_ids))
    return ModelInfo("psn", label_set, k, inputs, outputs)


@pytest.fixture
def cached(tmp_path) -> Path:
    """An engine + sidecar written the way build_engine writes them."""
    path = cached_engine_path(tmp_path, "models/psn.onnx", KEY)
    sidecar = Sidecar(KEY, hashlib.sha256(ENGINE_BYTES).hexdigest(), info(), {"onnx_path": "psn.onnx"})
    write_engine(path, ENGINE_BYTES, sidecar)
    return path


def test_every_key_fact_changes_the_digest():
    digests = {KEY.digest()}
    for change in ({"onnx_sha256": "cd" * 32}, {"tensorrt_version": "10.3.0.30"}, {"gpu_name": "Xavier"},
                   {"compute_capability": "7.2"}, {"precision": "int8"}, {"tensorrt_module": "tensorrt_rtx_bindings"},
                   {"builder_recipe": BUILDER_RECIPE + 1}):
        digests.add(replace(KEY, **change).digest())
    assert len(digests) == 8
    assert KEY.builder_recipe == BUILDER_RECIPE  # a new recipe invalidates every engine built by the old one
    assert KEY.digest() == EngineKey(**vars(KEY)).digest()  # stable


def test_key_differences_say_what_changed():
    running = replace(KEY, tensorrt_version="10.3.0.30", gpu_name="Orin Nano")
    assert running.differences(KEY) == ["tensorrt_version: built '8.6.2.3', running '10.3.0.30'",
                                        "gpu_name: built 'Orin', running 'Orin Nano'"]
    assert KEY.differences(KEY) == []


def test_cache_path_names_model_precision_and_key(tmp_path):
    path = cached_engine_path(tmp_path, "/models/my model+v2.onnx", KEY)
    assert path.parent == tmp_path
    assert path.name == f"my_model_v2-fp16-{KEY.digest()}.engine"
    assert sidecar_path(path).name == path.name + ".json"


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "engines"))
    assert default_cache_dir() == tmp_path / "engines"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_dir() == Path.home() / ".cache" / "panoptic_ros" / "engines"


def test_timing_cache_is_shared_per_tensorrt_and_gpu(tmp_path):
    same = timing_cache_path(tmp_path, replace(KEY, precision="int8", onnx_sha256="00" * 32))
    assert same == timing_cache_path(tmp_path, KEY)
    assert timing_cache_path(tmp_path, replace(KEY, tensorrt_version="10.3")) != same
    assert timing_cache_path(tmp_path, replace(KEY, compute_capability="7.2")) != same
    assert timing_cache_path(tmp_path, replace(KEY, tensorrt_module="tensorrt_rtx_bindings")) != same


def test_sidecar_round_trip(cached):
    sidecar = read_sidecar(cached)
    assert sidecar.key == KEY
    assert sidecar.info == info()
    assert sidecar.engine_sha256 == file_sha256(cached)
    assert sidecar.build == {"onnx_path": "psn.onnx"}
    assert cached.read_bytes() == ENGINE_BYTES
    assert not list(cached.parent.glob("*.tmp"))  # atomic writes leave no temporaries
    # readable by a node running as another user than build-engine
    assert cached.stat().st_mode & 0o777 == 0o644 and sidecar_path(cached).stat().st_mode & 0o777 == 0o644


def test_a_sidecar_must_name_the_engine_it_commits(tmp_path):
    sidecar = Sidecar(KEY, hashlib.sha256(b"other").hexdigest(), info(), {})
    with pytest.raises(ValueError, match="does not name these engine bytes"):
        write_engine(tmp_path / "x.engine", ENGINE_BYTES, sidecar)
    assert not (tmp_path / "x.engine").exists()


def test_missing_and_corrupt_sidecars_are_named(cached, tmp_path):
    with pytest.raises(FileNotFoundError, match="other.engine.json"):
        read_sidecar(tmp_path / "other.engine")
    sidecar_path(cached).write_text("{not json")
    with pytest.raises(ValueError, match=f"{sidecar_path(cached).name} is corrupt"):
        read_sidecar(cached)
    data = {"format": 1, "key": {"onnx_sha256": "x"}, "engine_sha256": "y", "model": {}}
    sidecar_path(cached).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="is corrupt"):
        read_sidecar(cached)
    sidecar_path(cached).write_text(json.dumps({**data, "format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        read_sidecar(cached)


def test_a_matching_engine_has_no_problems(cached):
    entry = CacheEntry.read(cached)
    assert entry.engine_bytes == ENGINE_BYTES and entry.sidecar == read_sidecar(cached)
    assert entry.problems(KEY, info()) == [] and entry.problems(KEY, None) == []


def test_staleness_reasons(cached, tmp_path):
    entry = CacheEntry.read(cached)
    missing = tmp_path / "none.engine"
    assert CacheEntry.read(missing).problems(KEY, info()) == [f"no engine at {missing}"]
    sidecar_path(cached).unlink()
    assert "missing or corrupt sidecar" in CacheEntry.read(cached).problems(KEY, info())[0]
    newer = replace(KEY, tensorrt_version="10.3.0.30")
    assert entry.problems(newer, info()) == ["tensorrt_version: built '8.6.2.3', running '10.3.0.30'"]
    other_gpu = replace(KEY, gpu_name="Xavier", compute_capability="7.2")
    assert len(entry.problems(other_gpu, info())) == 2
    resized = entry.problems(KEY, info(height=512, width=1024))
    assert resized and all(p.startswith("I/O ") for p in resized) and "expected [512, 1024, 3]" in resized[0]
    relabelled = entry.problems(KEY, info(label_set=CITYSCAPES))
    assert any("instances" in p for p in relabelled)


def test_unreadable_files_are_stale_not_fatal(cached):
    """Any OSError on read (permissions, a directory in the way) means: rebuild, or refuse with the command."""
    sidecar_path(cached).unlink()
    sidecar_path(cached).mkdir()
    problems = CacheEntry.read(cached).problems(KEY, info())
    assert len(problems) == 1 and "cannot be read" in problems[0]
    cached.unlink()
    cached.mkdir()
    problems = CacheEntry.read(cached).problems(KEY, info())
    assert len(problems) == 1 and problems[0].startswith(f"cannot read {cached}")


def test_a_damaged_engine_file_is_caught_by_its_hash(cached):
    data = bytearray(cached.read_bytes())
    data[3] ^= 0xFF
    cached.write_bytes(bytes(data))
    problems = CacheEntry.read(cached).problems(KEY, info())
    assert problems == [f"{cached} does not match the hash in its sidecar (corrupt, replaced or being written)"]
    cached.write_bytes(ENGINE_BYTES[:5])  # truncated
    assert CacheEntry.read(cached).problems(KEY, info())


@pytest.mark.parametrize("problems, allow_build, precision, action", [
    ([], True, "fp16", Action.LOAD),
    ([], False, "fp16", Action.LOAD),
    ([], False, "int8", Action.LOAD),
    (["stale"], True, "fp16", Action.BUILD),
    (["stale"], True, "fp32", Action.BUILD),
    (["stale"], False, "fp16", Action.REFUSE),
    (["stale"], True, "int8", Action.REFUSE),  # calibration needs images: never automatic
])
def test_decision(problems, allow_build, precision, action):
    assert decide(problems, allow_build, precision) is action


def test_refusal_says_the_exact_command(tmp_path):
    engine = tmp_path / "my engines" / "psn-fp16-0123.engine"
    message = refusal_message(engine, ["tensorrt_version: built '8.6', running '10.3'"], "/m/psn.onnx", "fp16")
    assert "tensorrt_version: built '8.6', running '10.3'" in message and "building is disabled" in message
    command = message.split("Build it with: ")[1]
    assert shlex.split(command) == ["panoptic-ros", "build-engine", "--onnx", "/m/psn.onnx", "--precision", "fp16",
                                    "--output", str(engine)]
    assert "--calib-images" in build_command("/m/psn.onnx", "int8", engine)


def test_unknown_precision_lists_the_valid_ones():
    assert check_precision("int8") == "int8"
    with pytest.raises(ValueError, match="fp32, fp16, int8"):
        check_precision("fp8")

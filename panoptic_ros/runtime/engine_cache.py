"""Where TensorRT engines live, and when one may be used, must be rebuilt, or is refused.

An engine is only valid for the ONNX file, TensorRT library and version, GPU, precision and
builder recipe it was built with, so the cache keys it by all of them:
<cache>/<onnx stem>-<precision>-<key digest>.engine, with a sidecar JSON (<engine>.json) that
records the key, the engine file's own hash and the model facts (ONNX metadata and I/O). A
valid cached engine is never rebuilt; a stale, corrupt or unreadable one is rebuilt once, or,
when building is not allowed, refused with the exact command that builds it.

Several processes share one cache (two nodes starting together, a node and `build-engine`):
- checking, building and writing an entry happen under an exclusive flock on <engine>.lock, and
  the entry is re-checked once the lock is held, so a second process loads what the first built;
- the sidecar is the commit point: it is written last and names the engine's SHA-256, and the
  engine is loaded from the very bytes that were hashed, so a half-written entry (new engine, old
  sidecar) is never used: it reads as stale and the reader waits for the lock;
- files are written whole (temporary file, fsync, rename) with mode 0644.

Everything here is plain Python: the TensorRT facts (module, version, GPU) are arguments and the
builder is a function passed in, so the decisions are tested where TensorRT is absent. This
module does not import engine_builder (engine_builder imports it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TypeVar

from panoptic_ros.runtime.atomic_files import atomic_write, exclusive_lock
from panoptic_ros.runtime.backends.model_info import ModelInfo, io_differences
from panoptic_ros.runtime.choices import PRECISIONS

CACHE_ENV = "PANOPTIC_ROS_ENGINE_CACHE"
SIDECAR_FORMAT = 2
# Bump whenever engine_builder changes how an engine is made (pinning rule, flags, typing): every
# cached engine then gets a new key and is rebuilt once.
BUILDER_RECIPE = 2
T = TypeVar("T")
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$PANOPTIC_ROS_ENGINE_CACHE, else ~/.cache/panoptic_ros/engines."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "panoptic_ros" / "engines")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on."""

    onnx_sha256: str
    tensorrt_module: str  # "tensorrt" or "tensorrt_rtx_bindings"
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Jetson AGX Orin)
    precision: str
    builder_recipe: int = BUILDER_RECIPE

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: EngineKey) -> list[str]:
        """What differs, in words ('tensorrt_version: built 8.6.1, running 10.3.0')."""
        return [f"{f.name}: built {getattr(other, f.name)!r}, running {getattr(self, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def cached_engine_path(cache_dir: str | Path, onnx_path: str | Path, key: EngineKey) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(onnx_path).stem)
    return Path(cache_dir) / f"{stem}-{key.precision}-{key.digest()}.engine"


def beside(engine_path: str | Path, suffix: str) -> Path:
    """The file next to an engine whose name is the engine's name plus `suffix`."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + suffix)


def sidecar_path(engine_path: str | Path) -> Path:
    return beside(engine_path, ".json")


@dataclass(frozen=True)
class Sidecar:
    """The facts stored beside an engine: its key, its own hash, the model it runs, how it was built."""

    key: EngineKey
    engine_sha256: str
    info: ModelInfo
    build: dict  # onnx_path, workspace_mb, calibration, build_seconds, ...

    def to_dict(self) -> dict:
        return {"format": SIDECAR_FORMAT, "key": asdict(self.key), "engine_sha256": self.engine_sha256,
                "model": self.info.to_dict(), "build": self.build}


def read_sidecar(engine_path: str | Path) -> Sidecar:
    """The sidecar of an engine; FileNotFoundError/ValueError naming the file when absent or unreadable."""
    path = sidecar_path(engine_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"engine sidecar not found: {path} (engines built by `panoptic-ros build-engine` "
                                "have one; it carries the model's label set and I/O)") from None
    except OSError as error:  # unreadable (permissions, a directory, I/O error): stale, not fatal
        raise ValueError(f"engine sidecar {path} cannot be read: {error.strerror or error}") from None
    try:
        data = json.loads(text)
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {SIDECAR_FORMAT}")
        return Sidecar(EngineKey(**data["key"]), str(data["engine_sha256"]), ModelInfo.from_dict(data["model"], path),
                       dict(data.get("build", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"engine sidecar {path} is corrupt: {error}") from None


def write_engine(engine_path: str | Path, engine_bytes: bytes, sidecar: Sidecar) -> None:
    """Write engine, then sidecar, each atomically. The sidecar is the commit point: until it is
    replaced, readers see the old sidecar beside the new engine, whose hash does not match."""
    if hashlib.sha256(engine_bytes).hexdigest() != sidecar.engine_sha256:
        raise ValueError("the sidecar does not name these engine bytes")
    atomic_write(engine_path, engine_bytes)
    atomic_write(sidecar_path(engine_path), json.dumps(sidecar.to_dict(), indent=2).encode())


def lock_path(engine_path: str | Path) -> Path:
    return beside(engine_path, ".lock")


@dataclass(frozen=True)
class CacheEntry:
    """An engine and its sidecar as read from disk at one moment, and what kept either from being read."""

    path: Path
    engine_bytes: bytes | None
    sidecar: Sidecar | None
    read_problems: tuple[str, ...] = ()

    @classmethod
    def read(cls, engine_path: str | Path) -> CacheEntry:
        """Read both files; any OSError or corrupt content becomes a read problem (stale), never an exception."""
        engine_path = Path(engine_path)
        problems = []
        engine_bytes = sidecar = None
        try:
            engine_bytes = engine_path.read_bytes()
        except FileNotFoundError:
            problems.append(f"no engine at {engine_path}")
        except OSError as error:
            problems.append(f"cannot read {engine_path}: {error.strerror or error}")
        if engine_bytes is not None:
            try:
                sidecar = read_sidecar(engine_path)
            except (FileNotFoundError, ValueError) as error:
                problems.append(f"missing or corrupt sidecar: {error}")
        return cls(engine_path, engine_bytes, sidecar, tuple(problems))

    def problems(self, key: EngineKey, info: ModelInfo | None) -> list[str]:
        """Why this entry is unusable for `key` and model `info` ([] if usable); `info` None skips
        the I/O check (an engine given without its ONNX)."""
        if self.read_problems:
            return list(self.read_problems)
        problems = key.differences(self.sidecar.key)
        if hashlib.sha256(self.engine_bytes).hexdigest() != self.sidecar.engine_sha256:
            problems.append(f"{self.path} does not match the hash in its sidecar (corrupt, replaced or being written)")
        if info is not None:
            problems += [f"I/O {p}" for p in io_differences(info.inputs, self.sidecar.info.inputs) +
                         io_differences(info.outputs, self.sidecar.info.outputs)]
        return problems


class Action(Enum):
    LOAD = "load"
    BUILD = "build"
    REFUSE = "refuse"


def decide(problems: list[str], allow_build: bool, precision: str) -> Action:
    """Load a valid engine; build a missing or stale one when allowed. INT8 is never built
    automatically: it needs calibration images, so it is refused with the command to run."""
    if not problems:
        return Action.LOAD
    if allow_build and precision != "int8":
        return Action.BUILD
    return Action.REFUSE


def build_command(onnx_path: str | Path, precision: str, engine_path: str | Path) -> str:
    """The `panoptic-ros build-engine` command that produces `engine_path`."""
    args = ["panoptic-ros", "build-engine", "--onnx", str(onnx_path), "--precision", precision,
            "--output", str(engine_path)]
    if precision == "int8":
        args += ["--calib-images", "DIR"]
    return shlex.join(args)


def refusal_message(engine_path: Path, problems: list[str], onnx_path: str | Path, precision: str) -> str:
    reason = "; ".join(problems)
    return (f"TensorRT engine {engine_path} is not usable ({reason}) and building is disabled here. "
            f"Build it with: {build_command(onnx_path, precision, engine_path)}")


def running_key(onnx_sha256: str, precision: str, device_index: int, trt=None) -> EngineKey:
    """The key for this machine: the TensorRT module `trt` (default: the installed one) and the GPU
    at `device_index`."""
    from panoptic_ros.runtime.backends.trt_api import gpu_identity, import_tensorrt

    trt = trt or import_tensorrt()
    gpu_name, capability = gpu_identity(device_index)
    return EngineKey(onnx_sha256, trt.__name__, trt.__version__, gpu_name, capability, check_precision(precision))


def timing_cache_path(cache_dir: str | Path, key: EngineKey) -> Path:
    """Timing caches are shared by all models of one TensorRT library, version and GPU."""
    facts = f"{key.tensorrt_module}|{key.tensorrt_version}|{key.gpu_name}|{key.compute_capability}"
    return Path(cache_dir) / f"timing-{hashlib.sha256(facts.encode()).hexdigest()[:16]}.cache"


def check_prebuilt_engine(engine_path: Path, key_of: Callable[[EngineKey], EngineKey]) -> CacheEntry:
    """An engine given by path, read and checked against this machine: `key_of(built_key)` is the
    running key for the built engine's ONNX hash and precision.

    A prebuilt engine is never rebuilt here (its ONNX may be elsewhere): a stale one is refused
    with the command that rebuilds it.
    """
    entry = CacheEntry.read(engine_path)
    if entry.sidecar is None:
        raise RuntimeError(f"TensorRT engine {engine_path} is not usable: {'; '.join(entry.read_problems)}")
    key = key_of(entry.sidecar.key)
    problems = entry.problems(key, info=None)
    if problems:
        onnx_path = entry.sidecar.build.get("onnx_path", "MODEL.onnx")
        raise RuntimeError(refusal_message(Path(engine_path), problems, onnx_path, key.precision))
    return entry


# build(engine_path, timing_cache_path) writes a complete entry (engine_builder.build_engine).
Builder = Callable[[Path, Path], object]


def load_or_build(onnx_path: str | Path, key: EngineKey, load: Callable[[bytes, Path], T], build: Builder | None,
                  cache_dir: str | Path | None = None) -> tuple[Path, Sidecar, T]:
    """The cached engine for `onnx_path` under `key`, loaded with `load(engine_bytes, path)`: built
    first with `build` when missing, stale, unreadable or corrupt; refused with the build command
    when `build` is None (building not allowed) or the precision is int8."""
    from panoptic_ros.runtime.backends.model_info import read_onnx_info

    info = read_onnx_info(onnx_path)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    engine_path = cached_engine_path(cache_dir, onnx_path, key)
    loaded = _load_valid(engine_path, key, info, load)
    if isinstance(loaded, tuple):
        return loaded
    with exclusive_lock(lock_path(engine_path)):
        loaded = _load_valid(engine_path, key, info, load)  # another process may have built it meanwhile
        if isinstance(loaded, tuple):
            return loaded
        problems = loaded
        if decide(problems, build is not None, key.precision) is Action.REFUSE:
            raise RuntimeError(refusal_message(engine_path, problems, onnx_path, key.precision))
        log.warning("building TensorRT engine %s (%s); this is done once per model, TensorRT version and GPU, "
                    "and takes minutes on a Jetson", engine_path, "; ".join(problems))
        build(engine_path, timing_cache_path(cache_dir, key))
        entry = CacheEntry.read(engine_path)
        problems = entry.problems(key, info)
        if problems:  # no rebuild loop: a fresh engine that does not fit is an error
            raise RuntimeError(f"the engine just built at {engine_path} is not usable: {'; '.join(problems)}")
        return engine_path, entry.sidecar, load(entry.engine_bytes, engine_path)


def _load_valid(engine_path: Path, key: EngineKey, info: ModelInfo, load: Callable[[bytes, Path], T]):
    """(path, sidecar, loaded) for a valid entry, else the list of its problems."""
    entry = CacheEntry.read(engine_path)
    problems = entry.problems(key, info)
    if not problems:
        try:
            return engine_path, entry.sidecar, load(entry.engine_bytes, engine_path)
        except ValueError as error:  # TensorRT refused the bytes: corrupt in a way the hash did not catch
            problems = [str(error)]
    return problems

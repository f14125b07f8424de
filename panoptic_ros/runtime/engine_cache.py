"""Where TensorRT engines live, and when one may be used, must be rebuilt, or is refused.

An engine is only valid for the ONNX file, TensorRT version, GPU and precision it was built for,
so the cache keys it by all of them: <cache>/<onnx stem>-<precision>-<key digest>.engine, with a
sidecar JSON (<engine>.json) that records the key, the engine file's own hash and the model facts
(ONNX metadata and I/O). Loading checks the sidecar against the running TensorRT and GPU and the
ONNX; a stale or corrupt engine is rebuilt once, or, when building is not allowed, refused with the
exact command that builds it. A valid cached engine is never rebuilt.

Everything here is plain Python: the TensorRT facts (version, GPU) are arguments, so the decisions
are tested where TensorRT is absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TypeVar

from panoptic_ros.runtime.backends.model_info import ModelInfo, io_differences
from panoptic_ros.runtime.choices import PRECISIONS

CACHE_ENV = "PANOPTIC_ROS_ENGINE_CACHE"
SIDECAR_FORMAT = 1
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
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" (Jetson AGX Orin)
    precision: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def differences(self, other: EngineKey) -> list[str]:
        """What differs, in words ('tensorrt_version: built 8.6.1, running 10.3.0')."""
        return [f"{f.name}: built {getattr(other, f.name)!r}, running {getattr(self, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


def cached_engine_path(cache_dir: str | Path, onnx_path: str | Path, key: EngineKey) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(onnx_path).stem)
    return Path(cache_dir) / f"{stem}-{key.precision}-{key.digest()}.engine"


def sidecar_path(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


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
    if not path.is_file():
        raise FileNotFoundError(f"engine sidecar not found: {path} (engines built by `panoptic-ros build-engine` "
                                "have one; it carries the model's label set and I/O)")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {SIDECAR_FORMAT}")
        return Sidecar(EngineKey(**data["key"]), str(data["engine_sha256"]), ModelInfo.from_dict(data["model"], path),
                       dict(data.get("build", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"engine sidecar {path} is corrupt: {error}") from None


def write_engine(engine_path: str | Path, engine_bytes: bytes, sidecar: Sidecar) -> None:
    """Write engine and sidecar atomically (a crash or a second process never leaves half a file)."""
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    sidecar_bytes = json.dumps(sidecar.to_dict(), indent=2).encode()
    for path, data in ((engine_path, engine_bytes), (sidecar_path(engine_path), sidecar_bytes)):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def engine_problems(engine_path: Path, sidecar: Sidecar | None, key: EngineKey, info: ModelInfo | None) -> list[str]:
    """Why the engine at `engine_path` (with this sidecar) is unusable for `key` and model `info`; [] if usable.

    `sidecar` None means it is missing or unreadable; `info` None skips the I/O check (an engine
    given without its ONNX).
    """
    if not engine_path.is_file():
        return [f"no engine at {engine_path}"]
    if sidecar is None:
        return [f"missing or corrupt sidecar {sidecar_path(engine_path)}"]
    problems = key.differences(sidecar.key)
    if file_sha256(engine_path) != sidecar.engine_sha256:
        problems.append(f"{engine_path} does not match the hash in its sidecar (corrupt or replaced)")
    if info is not None:
        problems += [f"I/O {p}" for p in io_differences(info.inputs, sidecar.info.inputs) +
                     io_differences(info.outputs, sidecar.info.outputs)]
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


def running_key(onnx_sha256: str, precision: str, device_index: int) -> EngineKey:
    """The key for this machine: the installed TensorRT and the GPU at `device_index`."""
    from panoptic_ros.runtime.backends.trt_api import gpu_identity, import_tensorrt

    version = import_tensorrt().__version__
    gpu_name, capability = gpu_identity(device_index)
    return EngineKey(onnx_sha256, version, gpu_name, capability, check_precision(precision))


def timing_cache_path(cache_dir: str | Path, key: EngineKey) -> Path:
    """Timing caches are shared by all models of one TensorRT version and GPU."""
    facts = f"{key.tensorrt_version}|{key.gpu_name}|{key.compute_capability}"
    return Path(cache_dir) / f"timing-{hashlib.sha256(facts.encode()).hexdigest()[:16]}.cache"


def check_prebuilt_engine(engine_path: Path, device_index: int) -> Sidecar:
    """The sidecar of an engine given by path, after checking it suits this TensorRT and GPU.

    A prebuilt engine is never rebuilt here (its ONNX may be elsewhere): a stale one is refused
    with the command that rebuilds it.
    """
    sidecar = read_sidecar(engine_path)
    key = running_key(sidecar.key.onnx_sha256, sidecar.key.precision, device_index)
    problems = engine_problems(Path(engine_path), sidecar, key, info=None)
    if problems:
        onnx_path = sidecar.build.get("onnx_path", "MODEL.onnx")
        raise RuntimeError(refusal_message(Path(engine_path), problems, onnx_path, key.precision))
    return sidecar


def load_or_build(onnx_path: str | Path, precision: str, load: Callable[[Path], T], cache_dir: str | Path | None = None,
                  allow_build: bool = True, workspace_mb: int = 1024, device_index: int = 0) -> tuple[Path, Sidecar, T]:
    """The cached engine for `onnx_path` at `precision`, loaded with `load`: built first when missing,
    stale or corrupt and `allow_build`; otherwise refused with the build command."""
    from panoptic_ros.runtime.backends.model_info import read_onnx_info

    info = read_onnx_info(onnx_path)
    key = running_key(file_sha256(onnx_path), precision, device_index)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    engine_path = cached_engine_path(cache_dir, onnx_path, key)
    try:
        sidecar: Sidecar | None = read_sidecar(engine_path)
    except (FileNotFoundError, ValueError):
        sidecar = None
    problems = engine_problems(engine_path, sidecar, key, info)
    if not problems:
        try:
            return engine_path, sidecar, load(engine_path)
        except ValueError as error:  # TensorRT refused the bytes: corrupt in a way the hash did not catch
            problems = [str(error)]
    if decide(problems, allow_build, precision) is Action.REFUSE:
        raise RuntimeError(refusal_message(engine_path, problems, onnx_path, precision))
    from panoptic_ros.runtime.engine_builder import build_engine

    log.warning("building TensorRT engine %s (%s); this is done once per model, TensorRT version and GPU, "
                "and takes minutes on a Jetson", engine_path, "; ".join(problems))
    sidecar = build_engine(onnx_path, engine_path, precision, workspace_mb=workspace_mb,
                           timing_cache=timing_cache_path(cache_dir, key), device_index=device_index)
    return engine_path, sidecar, load(engine_path)  # a fresh engine that fails to load raises: no rebuild loop

"""Evaluation of many bags: one after another, on N local processes, or as tasks on a Ray cluster, with one
combined report that is the same whichever way the bags were run.

Each bag is a `BagTask`: everything a worker needs, picklable: the bag's path, the model (`ModelSpec`:
backend, file, device and options, and for a cluster the file's bytes, so that workers need no copy of
it), the ground truth to use (`GroundTruthSpec`), thresholds and limits. A worker runs `evaluate_task`:
it loads the model (once per worker process), opens the ground truth and runs `evaluate_bag`. A bag that
cannot be read at all, or fails part-way, becomes a row with its error; the other bags' results are kept.

The per-bag PQ accumulators are merged in the order the bags were given, whatever order they finished
in, so PQ over everything is identical (bit for bit) between sequential, `jobs` and Ray runs.

With `split_frames`, a long bag is evaluated as ranges of its frames, each a task of its own
(evaluation.frame_ranges), and the ranges' evaluations are joined back into the bag's, in order: the
report is the one of the bag run in one piece. A task can also write the bag's predictions
(`output_bag`) and track its frames (`tracking`, per bag: STQ in its row); neither goes with ranges.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from panoptic_ros.classes import LabelSet
from panoptic_ros.data.rosbag_io import BagError
from panoptic_ros.evaluation.bag_eval import STAGES, BagEvaluation, evaluate_bag, image_topic_count
from panoptic_ros.evaluation.frame_ranges import WHOLE_BAG, FrameRange, join_accumulators, split_range
from panoptic_ros.evaluation.ground_truth import FolderGroundTruth, GroundTruthSource, TopicGroundTruth
from panoptic_ros.evaluation.pq import PQAccumulator, PQResult
from panoptic_ros.evaluation.report import latency_summary, write_report
from panoptic_ros.tracking.config import TrackerConfig
from panoptic_ros.tracking.evaluation import SequenceTracking

RAY_HINT = "pip install 'panoptic_ros[cluster]' (or the pinned ray from requirements.txt)"
BAG_SUFFIXES = (".mcap", ".db3")


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model: create_backend's arguments, and the file's bytes where it has no copy."""

    backend: str
    model_file: str
    device: str = "auto"
    options: tuple[tuple[str, Any], ...] = ()  # create_backend keyword options
    model_bytes: bytes | None = field(default=None, repr=False)

    def portable(self) -> ModelSpec:
        """The same model with the file's bytes inside, for workers on other machines."""
        return replace(self, model_bytes=Path(self.model_file).read_bytes())

    def create(self):
        """A runtime.backends.Backend of this model."""
        from panoptic_ros.runtime.backends import create_backend

        if self.model_bytes is None:
            return create_backend(self.backend, self.model_file, device=self.device, **dict(self.options))
        # Backends read the whole file when they load it: a temporary copy is enough.
        with tempfile.TemporaryDirectory(prefix="panoptic-model-") as directory:
            path = Path(directory) / Path(self.model_file).name
            path.write_bytes(self.model_bytes)
            return create_backend(self.backend, path, device=self.device, **dict(self.options))


@dataclass(frozen=True)
class GroundTruthSpec:
    """The ground truth of a bag: a topic in it, a panoptic folder (see evaluation.ground_truth), or none."""

    topic: str | None = None
    folder: str | None = None
    json_path: str | None = None
    layout: str = "coco"
    match: str = "stamp"
    tolerance_ns: int = 0

    def open(self, bag: str | Path, label_set: LabelSet) -> GroundTruthSource | None:
        if self.topic is not None:
            return TopicGroundTruth(bag, self.topic, self.tolerance_ns)
        if self.folder is not None:
            return FolderGroundTruth(self.folder, label_set, self.json_path, self.layout, self.match,
                                     self.tolerance_ns)
        return None


@dataclass(frozen=True)
class TrackingSpec:
    """--tracking: the tracker on (or off: per-frame instance ids, the baseline) and its settings."""

    use_tracker: bool = True
    config: TrackerConfig = TrackerConfig()

    def create(self, label_set: LabelSet, label_divisor: int) -> SequenceTracking:
        """The tracking of one bag."""
        return SequenceTracking(label_set, label_divisor, self.use_tracker, self.config)


@dataclass(frozen=True)
class BagTask:
    """One bag's evaluation (or one range of its frames), as a worker runs it."""

    bag: str
    image_topic: str
    model: ModelSpec
    ground_truth: GroundTruthSpec = GroundTruthSpec()
    thresholds: tuple[tuple[str, float], ...] = ()  # overrides of the model's default thresholds
    label_divisor: int = 1000
    max_frames: int | None = None
    num_overlays: int = 0
    overlap: bool = True  # decoding, inference and scoring overlap (evaluate_bag)
    frame_range: FrameRange = WHOLE_BAG
    output_bag: str | None = None  # the predictions bag to write (a path where the task runs)
    tracking: TrackingSpec | None = None


@dataclass
class BagOutcome:
    """A bag's evaluation, or why there is none (`error`: the bag could not be read, or the run failed)."""

    bag: str
    evaluation: BagEvaluation | None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        """The combined report's row for this bag."""
        evaluation = self.evaluation
        row: dict[str, Any] = {"bag": self.bag}
        if evaluation is None:
            return {**row, "frames run": 0, "frames evaluated": 0, "skipped": 0, "pq": None, "sq": None, "rq": None,
                    "total p50 ms": None, "not converged": 0, "candidates dropped": 0, "error": self.error}
        result = evaluation.result
        total = latency_summary({"total": evaluation.latencies_ms.get("total", [])}).get("total")
        return {**row, "frames run": evaluation.frames,
                "frames evaluated": result.num_frames if result is not None else 0,
                "skipped": sum(evaluation.skipped.values()),
                "pq": result.all.pq if result is not None else None,
                "sq": result.all.sq if result is not None else None,
                "rq": result.all.rq if result is not None else None,
                "total p50 ms": round(total["p50"], 2) if total else None,
                "not converged": evaluation.not_converged, "candidates dropped": evaluation.candidates_dropped,
                **_tracking_columns(evaluation), "error": evaluation.bag_error}


def _tracking_columns(evaluation: BagEvaluation) -> dict[str, Any]:
    """STQ columns of a bag row, with tracking (STQ is a sequence's: one per bag, not merged over bags)."""
    if not evaluation.tracking_mode:
        return {}
    stq = evaluation.tracking
    return {"stq": stq.stq if stq else None, "aq": stq.aq if stq else None,
            "id switches": stq.id_switches if stq else None}


_backends: dict[ModelSpec, Any] = {}  # per worker process: each model is loaded once
_progress_slot = 0  # this worker's progress bar row (0: the overall bar's process)


def evaluate_task(task: BagTask, progress: bool = False) -> BagOutcome:
    """Evaluate one bag; every error becomes the outcome's `error`, naming the bag (and frame, when one is at
    fault), so that one bad bag never loses the others."""
    try:
        backend = _backends.get(task.model)
        if backend is None:
            backend = _backends[task.model] = task.model.create()
        tracking = task.tracking.create(backend.label_set, task.label_divisor) if task.tracking else None
        label = Path(task.bag).name + ("" if task.frame_range.whole else f" @{task.frame_range.start}")
        evaluation = evaluate_bag(task.bag, task.image_topic, backend,
                                  ground_truth=task.ground_truth.open(task.bag, backend.label_set),
                                  thresholds=dict(task.thresholds), label_divisor=task.label_divisor,
                                  max_frames=task.max_frames, num_overlays=task.num_overlays, overlap=task.overlap,
                                  output_bag=task.output_bag, tracking=tracking, frame_range=task.frame_range,
                                  progress=progress, progress_position=_progress_slot, progress_label=label)
    except Exception as error:  # noqa: BLE001 -- any failure of one bag is reported in its row
        message = str(error)
        return BagOutcome(task.bag, None, message if task.bag in message else f"bag {task.bag}: {message}")
    evaluation.info["model file"] = task.model.model_file  # not a worker's temporary copy
    return BagOutcome(task.bag, evaluation, None)


@dataclass
class FleetEvaluation:
    """What a run over many bags measured: each bag's outcome, in the order given, and their merged counts."""

    outcomes: list[BagOutcome]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def evaluations(self) -> list[BagEvaluation]:
        return [o.evaluation for o in self.outcomes if o.evaluation is not None]

    @property
    def accumulator(self) -> PQAccumulator | None:
        """The bags' counts merged in bag order (None when no bag had ground truth)."""
        merged = None
        for evaluation in self.evaluations:
            if evaluation.accumulator is None:
                continue
            if merged is None:
                merged = PQAccumulator(evaluation.accumulator.categories)
            merged.merge(evaluation.accumulator)
        return merged

    @property
    def result(self) -> PQResult | None:
        accumulator = self.accumulator
        return accumulator.result() if accumulator is not None else None

    @property
    def failed(self) -> list[BagOutcome]:
        """Bags that could not be read at all, or stopped early."""
        return [o for o in self.outcomes if o.error is not None
                or (o.evaluation is not None and o.evaluation.bag_error is not None)]

    def rows(self) -> list[dict[str, Any]]:
        return [o.row() for o in self.outcomes]

    def write_report(self, directory: str | Path, label_set: LabelSet | None = None) -> dict[str, Path]:
        """One report over all bags (as evaluation.report.write_report), with a row per bag."""
        evaluations = self.evaluations
        latencies: dict[str, list[float]] = {}
        skipped: Counter[str] = Counter()
        overlays: list[np.ndarray] = []
        for evaluation in evaluations:
            for stage, values in evaluation.latencies_ms.items():
                latencies.setdefault(stage, []).extend(values)
            skipped.update(evaluation.skipped)
            overlays.extend(evaluation.overlays)
        result = self.result
        first = evaluations[0].info if evaluations else {}
        info = {key: value for key, value in first.items() if key not in ("bag", "ground truth", "notes", "output bag")}
        info.update(self.info)
        info.update({"bags": len(self.outcomes), "bags with errors": len(self.failed),
                     "frames run": sum(e.frames for e in evaluations),
                     "frames not converged": sum(e.not_converged for e in evaluations),
                     "candidates dropped": sum(e.candidates_dropped for e in evaluations)})
        if result is not None:
            info["frames evaluated"] = result.num_frames
        return write_report(directory, result=result, latencies_ms=latencies, overlays=overlays,
                            skipped=dict(skipped), info=info, label_set=label_set, bags=self.rows())


def find_bags(paths: Sequence[str | Path]) -> list[Path]:
    """The bags named: each path is a bag (.mcap / .db3 file, or a rosbag2 directory with metadata.yaml) or a
    folder of bags (its bags, sorted by name). FileNotFoundError for a path that is neither."""
    bags: list[Path] = []
    for path in map(Path, paths):
        if path.is_file() or (path.is_dir() and (path / "metadata.yaml").is_file()):
            bags.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.iterdir()
                            if (p.is_file() and p.suffix in BAG_SUFFIXES)
                            or (p.is_dir() and (p / "metadata.yaml").is_file()))
            if not inside:
                raise FileNotFoundError(f"no bags in folder {path} (expected .mcap / .db3 files or rosbag2 "
                                        "directories with metadata.yaml)")
            bags.extend(inside)
        else:
            raise FileNotFoundError(f"bag not found: {path}")
    return bags


def overlay_shares(total: int, bags: int) -> list[int]:
    """`total` overlay strips spread over `bags` bags, the first ones taking the remainder."""
    return [total // bags + (i < total % bags) for i in range(bags)]


def evaluate_bags(tasks: Sequence[BagTask], *, jobs: int = 1, ray_address: str | None = None,
                  progress: bool = False, split_frames: int | None = None) -> FleetEvaluation:
    """Evaluate every task: in this process (jobs 1), on `jobs` local processes, or as Ray tasks on the cluster at
    `ray_address` ("auto": the running cluster; "local": a private one on this machine). `split_frames`: each
    bag as ranges of that many frames, a task each, joined back into one outcome per bag. Outcomes keep the
    tasks' order."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    parts = [split_task(task, split_frames) for task in tasks] if split_frames is not None else [[t] for t in tasks]
    flat = [part for bag_parts in parts for part in bag_parts]
    if ray_address is not None:
        finished = _on_ray(flat, ray_address, progress)
    elif jobs > 1 and len(flat) > 1:
        finished = _on_processes(flat, jobs, progress)
    else:
        with tqdm(total=len(flat), desc="tasks", unit="task", disable=not progress or len(flat) < 2) as bar:
            finished = []
            for task in flat:
                finished.append(evaluate_task(task, progress))
                bar.update()
    outcomes, first = [], 0
    for bag_parts in parts:
        outcomes.append(join_outcomes(finished[first:first + len(bag_parts)]))
        first += len(bag_parts)
    info = {"workers": f"ray {ray_address}" if ray_address is not None else f"{min(jobs, len(flat))} processes"}
    if len(flat) > len(tasks):
        info["frame ranges"] = f"{len(flat)} tasks of up to {split_frames} frames"
    return FleetEvaluation(outcomes, info)


def split_task(task: BagTask, frames_per_task: int) -> list[BagTask]:
    """A bag's task as tasks of `frames_per_task` frames each (one, unsplit, for a bag that cannot be read:
    its task reports why)."""
    if task.tracking is not None or task.output_bag is not None:
        raise ValueError(f"bag {task.bag}: tracking and the predictions bag follow a bag's frames in order, in one "
                         "task: they do not go with frame ranges")
    try:
        total = image_topic_count(task.bag, task.image_topic)
    except (BagError, FileNotFoundError):
        return [task]
    total = min(total, task.max_frames) if task.max_frames is not None else total
    return [replace(task, frame_range=frame_range) for frame_range in split_range(total, frames_per_task)]


def join_outcomes(parts: Sequence[BagOutcome]) -> BagOutcome:
    """One bag's outcome from its ranges' outcomes, in range order (see join_evaluations); a range that could
    not run at all ends the bag there with its error."""
    evaluations: list[BagEvaluation] = []
    for part in parts:
        if part.evaluation is None:
            if not evaluations:
                return part
            evaluations[-1] = replace(evaluations[-1], bag_error=part.error)
            break
        evaluations.append(part.evaluation)
    return BagOutcome(parts[0].bag, join_evaluations(evaluations) if len(evaluations) > 1 else evaluations[0])


def join_evaluations(parts: Sequence[BagEvaluation]) -> BagEvaluation:
    """The evaluation of a whole bag from the evaluations of its frame ranges, in range order: PQ counts joined
    (bit for bit those of the whole bag: frame_ranges.join_accumulators), frames, skip counts, latencies and
    overlays added up. A part that stopped early (damage, a failed frame) ends the bag there, as a run over
    the whole bag would have stopped: later parts are left out."""
    used = []
    for part in parts:
        used.append(part)
        if part.bag_error is not None:
            break
    accumulator = join_accumulators([p.accumulator for p in used]) if used[0].accumulator is not None else None
    latencies = {stage: [v for part in used for v in part.latencies_ms.get(stage, [])] for stage in STAGES}
    skipped: Counter[str] = Counter()
    reason_notes: dict[str, str] = {}
    for part in used:
        # A part's notes start with the first example of each skip reason, in the order of its skip counts.
        for reason, note in zip(part.skipped, part.notes, strict=False):
            reason_notes.setdefault(reason, note)
        skipped.update(part.skipped)
    last = used[-1]
    source_notes = last.notes[len(last.skipped):]  # the source's own (unreadable messages): the last read furthest
    return BagEvaluation(accumulator=accumulator, latencies_ms={s: v for s, v in latencies.items() if v},
                         skipped=dict(skipped), frames=sum(p.frames for p in used),
                         overlays=[o for p in used for o in p.overlays], bag_error=last.bag_error,
                         notes=[*reason_notes.values(), *source_notes], info=dict(used[0].info),
                         label_set=used[0].label_set, thresholds=used[0].thresholds,
                         not_converged=sum(p.not_converged for p in used),
                         candidates_dropped=sum(p.candidates_dropped for p in used))


def _claim_progress_slot(slots) -> None:
    """Process pool initializer: this worker's progress bar row, below the overall one."""
    global _progress_slot
    _progress_slot = slots.get()


def _on_processes(tasks: Sequence[BagTask], jobs: int, progress: bool) -> list[BagOutcome]:
    # spawn: a worker starts clean (no copy of this process's threads or loaded runtimes).
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(tasks))
    slots = context.Queue()
    for slot in range(1, workers + 1):
        slots.put(slot)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_claim_progress_slot,
                             initargs=(slots,)) as pool:
        futures = [pool.submit(evaluate_task, task, progress) for task in tasks]
        return _collect(futures, lambda future: future.result(), progress)


def _collect(pending: list, result_of: Callable, progress: bool, wait: Callable | None = None) -> list[BagOutcome]:
    """Results of `pending` (futures or Ray refs) in their order, the overall bar moving as each finishes."""
    from concurrent.futures import FIRST_COMPLETED
    from concurrent.futures import wait as wait_futures

    outcomes: dict[int, BagOutcome] = {}
    index = {id(item): i for i, item in enumerate(pending)}
    waiting = list(pending)
    with tqdm(total=len(pending), desc="bags", unit="bag", disable=not progress, position=0) as bar:
        while waiting:
            if wait is None:
                done, _ = wait_futures(waiting, return_when=FIRST_COMPLETED)
                done = list(done)
            else:
                done = wait(waiting)
            for item in done:
                outcomes[index[id(item)]] = result_of(item)
                waiting.remove(item)
                bar.update()
    return [outcomes[i] for i in range(len(pending))]


def _ray_evaluate(task: BagTask, model_bytes: bytes) -> BagOutcome:
    """A Ray task: the model's bytes come through the object store, once per node."""
    return evaluate_task(replace(task, model=replace(task.model, model_bytes=model_bytes)))


def _on_ray(tasks: Sequence[BagTask], address: str, progress: bool) -> list[BagOutcome]:
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_ray_evaluate)
        models = {}  # one object per model, shared by its tasks
        refs = []
        for task in tasks:
            if task.model not in models:
                models[task.model] = ray.put(Path(task.model.model_file).read_bytes())
            refs.append(remote.remote(task, models[task.model]))

        def finished(waiting):
            done, _ = ray.wait(waiting, num_returns=1)
            return done
        return _collect(refs, ray.get, progress, wait=finished)
    finally:
        if started:
            ray.shutdown()


def worker_threads(jobs: int, threads: int) -> int:
    """ONNX Runtime threads per worker: the cores shared out when not set (0), so N workers do not each take all."""
    if threads or jobs <= 1:
        return threads
    return max(1, (os.cpu_count() or 1) // jobs)

"""Evaluate predictions against ground truth, both in COCO panoptic layout (JSON + PNG folder).

Ground truth and prediction are paired by `image_id`, as the reference evaluators do; every ground-
truth image needs a prediction. The categories are the ground truth's.

Images are read and counted on a pool of threads (OpenCV's PNG decoding and NumPy's pixel passes release
the GIL; kornia-rs's decoder, a few ms a frame, does not) and added to the counts in ground-truth order, so
the numbers do not depend on the number of threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from panoptic_ros.evaluation.pq import PQAccumulator, PQResult


def evaluate_panoptic_folders(gt_json: str | Path, gt_dir: str | Path | None, pred_json: str | Path,
                              pred_dir: str | Path | None, cityscapes_train_ids: bool = False,
                              progress: bool = False, threads: int | None = None) -> PQResult:
    """PQ/SQ/RQ and mIoU of a prediction folder against a ground-truth folder.

    With `cityscapes_train_ids`, both are read as Cityscapes panoptic and compared in the 19 train ids
    (either may use label ids or train ids); otherwise category ids are compared as they are.
    `threads` read and count images in parallel (default: one per core).
    """
    from tqdm import tqdm

    from panoptic_ros.data.formats import read_cityscapes_panoptic, read_coco_panoptic

    def read(json_path, png_dir):
        if cityscapes_train_ids:
            return read_cityscapes_panoptic(json_path, png_dir, train_ids=True)
        return read_coco_panoptic(json_path, png_dir)

    categories, gt_annotations = read(gt_json, gt_dir)
    _, pred_annotations = read(pred_json, pred_dir)
    pred_index = {entry.get("image_id"): i for i, entry in enumerate(pred_annotations.entries)}
    missing = [entry.get("image_id") for entry in gt_annotations.entries if entry.get("image_id") not in pred_index]
    if missing:
        raise ValueError(f"{pred_json}: no prediction for {len(missing)} of {len(gt_annotations)} ground-truth "
                         f"images (image_id {', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''})")
    accumulator = PQAccumulator.from_coco(categories)

    def count(i: int):
        entry = gt_annotations.entries[i]
        try:
            return accumulator.histogram(gt_annotations[i], pred_annotations[pred_index[entry.get("image_id")]])
        except ValueError as error:
            raise ValueError(f"image {entry.get('image_id')!r} ({entry['file_name']}): {error}") from None

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        counted = pool.map(count, range(len(gt_annotations)))
        for frame in tqdm(counted, total=len(gt_annotations), desc="eval", unit="image", disable=not progress):
            accumulator.add_histogram(frame)
    return accumulator.result()

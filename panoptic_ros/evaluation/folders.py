"""Evaluate predictions against ground truth, both in COCO panoptic layout (JSON + PNG folder).

Ground truth and prediction are paired by `image_id`, as the reference evaluators do; every ground-
truth image needs a prediction. The categories are the ground truth's.
"""

from __future__ import annotations

from pathlib import Path

from panoptic_ros.evaluation.pq import PQAccumulator, PQResult


def evaluate_panoptic_folders(gt_json: str | Path, gt_dir: str | Path | None, pred_json: str | Path,
                              pred_dir: str | Path | None, cityscapes_train_ids: bool = False,
                              progress: bool = False) -> PQResult:
    """PQ/SQ/RQ and mIoU of a prediction folder against a ground-truth folder.

    With `cityscapes_train_ids`, both are read as Cityscapes panoptic and compared in the 19 train ids
    (either may use label ids or train ids); otherwise category ids are compared as they are.
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
    for i, entry in enumerate(tqdm(gt_annotations.entries, desc="eval", unit="image", disable=not progress)):
        gt = gt_annotations[i]
        pred = pred_annotations[pred_index[entry.get("image_id")]]
        try:
            accumulator.add(gt, pred)
        except ValueError as error:
            raise ValueError(f"image {entry.get('image_id')!r} ({entry['file_name']}): {error}") from None
    return accumulator.result()

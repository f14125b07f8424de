"""Which image-border rule of PSN's boundary-aware offset weights matches the uncropped truth?

Training computes the weights on each crop. An instance cut by the crop edge has no boundary there;
the rule in `training/targets/psn.py` treats the edge as no boundary (distance only to the
instance's visible boundary). This script compares, on random crops of synthetic scenes, the
weights of both rules with the weights computed on the whole scene, and prints the share of
instance pixels whose weight differs.

    python scripts/psn_border_weights.py --scenes 20 --crops 4
"""

from __future__ import annotations

import argparse

import numpy as np

from panoptic_ros.data.synthetic import generate_scene
from panoptic_ros.training.targets.psn import band_weights, boundary_distance


def instance_weights(instance: np.ndarray, border_is_boundary: bool) -> np.ndarray:
    """Band weights of every instance pixel (0 elsewhere) from the distance to its instance's boundary."""
    weights = np.zeros(instance.shape, np.float32)
    for instance_id in np.unique(instance[instance > 0]):
        mask = instance == instance_id
        pad = int(border_is_boundary)  # a padded ring: outside the image is outside the instance
        distance = boundary_distance(np.pad(mask, pad))[pad:mask.shape[0] + pad, pad:mask.shape[1] + pad]
        weights[mask] = band_weights(distance[mask])
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--crops", type=int, default=4, help="random 128 x 256 crops per 256 x 512 scene")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    differ = {False: 0, True: 0}
    total = 0
    for seed in range(args.scenes):
        instance = generate_scene(seed, 256, 512).instance.astype(np.int64)
        truth = instance_weights(instance, border_is_boundary=False)  # the scene's own border: see the doc above
        for _ in range(args.crops):
            top, left = int(rng.integers(0, 129)), int(rng.integers(0, 257))
            window = (slice(top, top + 128), slice(left, left + 256))
            inside = instance[window] > 0
            total += int(inside.sum())
            for rule in differ:
                weights = instance_weights(np.ascontiguousarray(instance[window]), rule)
                differ[rule] += int((weights[inside] != truth[window][inside]).sum())
    for rule, count in differ.items():
        name = "crop edge is a boundary" if rule else "crop edge is no boundary (ours)"
        print(f"{name}: {count} of {total} instance pixels differ from the whole-scene weights "
              f"({100 * count / total:.1f}%)")


if __name__ == "__main__":
    main()

"""`panoptic-ros synth`: write synthetic street scenes as a Cityscapes-style folder and/or a rosbag2.

Folder (Cityscapes layout, categories = SYNTHETIC train ids, segment id = class * 1000 + instance + 1):
    leftImg8bit/<split>/synth/<stem>_leftImg8bit.png           RGB image
    gtFine/<split>/synth/<stem>_gtFine_labelTrainIds.png        semantic train ids
    gtFine/cityscapes_panoptic_<split>/<stem>_gtFine_panoptic.png + gtFine/cityscapes_panoptic_<split>.json
Bag: rgb8 frames on --image-topic, 32SC1 ground truth (class * 1000 + instance, -1 void) with the
same header stamp on --gt-topic. Frame i is the scene of seed --seed + i.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

SYNTH_START_NS = 1_700_000_000 * 1_000_000_000  # a fixed first stamp: same command, same bag
LABEL_DIVISOR = 1000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="generate synthetic street scenes (folder and/or rosbag2)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20, help="number of frames (default 20)")
    parser.add_argument("--height", type=int, default=256, help="image height in pixels (default 256)")
    parser.add_argument("--width", type=int, default=512, help="image width in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first frame (default 0)")
    parser.add_argument("--out", type=Path, help="folder for the Cityscapes-style dataset")
    parser.add_argument("--split", default="val", help="split name inside the folder (default val)")
    parser.add_argument("--bag", type=Path, help="also write a rosbag2: F.mcap / F.db3 file, or a directory")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"),
                        help="bag storage (default: sqlite3 for a .db3 path, else mcap)")
    parser.add_argument("--rate", type=float, default=10.0, help="frame rate of the bag's stamps in Hz (default 10)")
    parser.add_argument("--image-topic", default="/camera/image_raw")
    parser.add_argument("--gt-topic", default="/camera/panoptic_gt")
    parser.add_argument("--compressed", action="store_true", help="JPEG CompressedImage frames instead of rgb8")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data import formats
    from panoptic_ros.data.rosbag_io import BagWriter
    from panoptic_ros.data.synthetic import generate_scene

    if args.frames <= 0:
        raise ValueError(f"--frames must be positive, got {args.frames}")
    if args.rate <= 0:
        raise ValueError(f"--rate must be positive, got {args.rate}")
    if args.out is None and args.bag is None:
        raise ValueError("nothing to write: give --out DIR and/or --bag FILE")
    storage = args.storage or ("sqlite3" if args.bag is not None and args.bag.suffix == ".db3" else "mcap")
    # Validate sizes once, before any file is created.
    generate_scene(args.seed, args.height, args.width)

    with contextlib.ExitStack() as stack:
        folder = bag = None
        if args.out is not None:
            json_path, png_dir = formats.cityscapes_panoptic_paths(args.out, args.split)
            folder = stack.enter_context(formats.CocoPanopticWriter(json_path, png_dir,
                                                                     formats.label_set_categories(SYNTHETIC)))
        if args.bag is not None:
            bag = stack.enter_context(BagWriter(args.bag, storage))
        for i in tqdm(range(args.frames), desc="synth", unit="frame"):
            scene = generate_scene(args.seed + i, args.height, args.width)
            if folder is not None:
                _write_to_folder(folder, args.out, args.split, args.seed + i, scene)
            if bag is not None:
                stamp = SYNTH_START_NS + round(i * 1e9 / args.rate)
                if args.compressed:
                    bag.write_compressed(args.image_topic, stamp, scene.image)
                else:
                    bag.write_image(args.image_topic, stamp, scene.image, "rgb8")
                bag.write_image(args.gt_topic, stamp, scene.panoptic(LABEL_DIVISOR), "32SC1")
    if args.out is not None:
        print(f"wrote {args.frames} frames to {args.out} (split {args.split})")
    if args.bag is not None:
        print(f"wrote {args.frames} frames to {args.bag} ({storage}: {args.image_topic}, {args.gt_topic})")
    return 0


def _write_to_folder(folder, root: Path, split: str, seed: int, scene) -> None:
    """Image, semantic train ids and panoptic annotation of one scene, in Cityscapes' layout."""
    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data import formats

    stem = f"synth_000000_{seed:06d}"
    image_name = f"{stem}_leftImg8bit.png"
    formats.write_rgb(formats.cityscapes_image_path(root, split, image_name), scene.image)
    formats.write_gray(root / "gtFine" / split / "synth" / f"{stem}_gtFine_labelTrainIds.png", scene.semantic)
    annotation = formats.from_id_map(scene.panoptic(LABEL_DIVISOR), LABEL_DIVISOR, SYNTHETIC,
                                     f"{stem}_gtFine_panoptic.png")
    annotation.image_id = stem
    height, width = scene.semantic.shape
    folder.add(annotation, {"id": stem, "file_name": image_name, "height": height, "width": width})

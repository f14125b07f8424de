"""`panoptic-ros synth`: write synthetic street scenes as a Cityscapes-style folder and/or a rosbag2.

Folder (Cityscapes layout, categories = SYNTHETIC train ids, segment id = class * 1000 + instance + 1):
    leftImg8bit/<split>/synth/<stem>_leftImg8bit.png           RGB image
    gtFine/<split>/synth/<stem>_gtFine_labelTrainIds.png        semantic train ids
    gtFine/cityscapes_panoptic_<split>/<stem>_gtFine_panoptic.png + gtFine/cityscapes_panoptic_<split>.json
Bag: rgb8 frames on --image-topic, 32SC1 ground truth (class * 1000 + instance, -1 void) with the
same header stamp on --gt-topic. Frame i is the scene of seed --seed + i.

--sequence: the frames are one street of seed --seed seen from a car driving along it, --fps frames per
second (default: --rate), things moving; the instance part of every ground-truth id is then the object's
track id, the same in every frame (bag: class * 1000 + track id; folder: segment id - 1 likewise, and each
annotation lists its segments' "track_ids"). Folder stems are synth_<seed>_<frame>.
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
    parser.add_argument("--sequence", action="store_true",
                        help="one temporally coherent street drive with track-id ground truth instead of "
                             "independent scenes")
    parser.add_argument("--fps", type=float, help="--sequence: frames per second of the drive and of the bag's "
                                                  "stamps (default: --rate)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data import formats
    from panoptic_ros.data.rosbag_io import BagWriter
    from panoptic_ros.data.synthetic import generate_scene, generate_sequence

    if args.frames <= 0:
        raise ValueError(f"--frames must be positive, got {args.frames}")
    if args.rate <= 0:
        raise ValueError(f"--rate must be positive, got {args.rate}")
    if args.fps is not None and not args.sequence:
        raise ValueError("--fps goes with --sequence (independent scenes have no motion)")
    rate = args.fps if args.fps is not None else args.rate
    if not rate > 0:
        raise ValueError(f"--fps must be positive, got {rate}")
    if args.out is None and args.bag is None:
        raise ValueError("nothing to write: give --out DIR and/or --bag FILE")
    storage = args.storage or ("sqlite3" if args.bag is not None and args.bag.suffix == ".db3" else "mcap")
    # Validate sizes once, before any file is created.
    generate_scene(args.seed, args.height, args.width)
    if args.sequence:
        scenes = generate_sequence(args.seed, args.frames, args.height, args.width, rate)
        stems = (f"synth_{args.seed:06d}_{i:06d}" for i in range(args.frames))
    else:
        scenes = (generate_scene(args.seed + i, args.height, args.width) for i in range(args.frames))
        stems = (f"synth_000000_{args.seed + i:06d}" for i in range(args.frames))

    with contextlib.ExitStack() as stack:
        folder = bag = None
        if args.out is not None:
            json_path, png_dir = formats.cityscapes_panoptic_paths(args.out, args.split)
            folder = stack.enter_context(formats.CocoPanopticWriter(json_path, png_dir,
                                                                     formats.label_set_categories(SYNTHETIC)))
        if args.bag is not None:
            bag = stack.enter_context(BagWriter(args.bag, storage))
        frames = tqdm(zip(scenes, stems, strict=True), total=args.frames, desc="synth", unit="frame")
        for i, (scene, stem) in enumerate(frames):
            if folder is not None:
                _write_to_folder(folder, args.out, args.split, stem, scene, tracks=args.sequence)
            if bag is not None:
                stamp = SYNTH_START_NS + round(i * 1e9 / rate)
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


def _write_to_folder(folder, root: Path, split: str, stem: str, scene, tracks: bool) -> None:
    """Image, semantic train ids and panoptic annotation of one scene, in Cityscapes' layout; with `tracks`,
    the annotation's "track_ids" map each thing segment id to its track id."""
    from panoptic_ros.classes import SYNTHETIC
    from panoptic_ros.data import formats

    image_name = f"{stem}_leftImg8bit.png"
    formats.write_rgb(formats.cityscapes_image_path(root, split, image_name), scene.image)
    formats.write_gray(root / "gtFine" / split / "synth" / f"{stem}_gtFine_labelTrainIds.png", scene.semantic)
    annotation = formats.from_id_map(scene.panoptic(LABEL_DIVISOR), LABEL_DIVISOR, SYNTHETIC,
                                     f"{stem}_gtFine_panoptic.png")
    annotation.image_id = stem
    if tracks:
        annotation.extra["track_ids"] = {str(sid): (sid - 1) % LABEL_DIVISOR for sid in annotation.segments
                                         if not annotation.segments[sid].iscrowd and (sid - 1) % LABEL_DIVISOR}
    height, width = scene.semantic.shape
    folder.add(annotation, {"id": stem, "file_name": image_name, "height": height, "width": width})

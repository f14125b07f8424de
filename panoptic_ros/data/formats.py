"""Panoptic annotation formats: COCO panoptic, Cityscapes panoptic, and our pipeline's id maps.

One in-memory form for all of them, `PanopticAnnotation`: an (H, W) map of segment ids (0 = void)
plus the segments' categories. COCO panoptic stores the map as an RGB PNG (id = R + 256 G + 256^2 B)
next to one JSON; Cityscapes panoptic is the same layout with Cityscapes label ids as categories,
and Cityscapes also ships `*_instanceIds.png` / `*_labelIds.png`. Our pipeline's output is
id = class * label_divisor + n (n = 1, 2, ... within each class, as Cityscapes' instanceIds count)
with -1 void; `from_id_map` / `to_id_map` bridge the two.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from panoptic_ros.classes import VOID_CLASS, VOID_ID, LabelSet

try:  # optional: decodes 8-bit RGB PNGs several times faster than OpenCV's libpng (requirements.txt pins it)
    from kornia_rs.io import read_image_png_u8
except ImportError:
    read_image_png_u8 = None

MAX_RGB_ID = 256**3 - 1


# --------------------------------------------------------------------------------------------
# RGB <-> id


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids (H, W) int32 of an RGB-encoded panoptic image (H, W, 3) uint8: R + 256 G + 256^2 B."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB panoptic image uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    # R, G, B and an alpha byte read as one little-endian uint32, alpha masked off: two passes instead of nine.
    ids = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2RGBA).view(np.dtype("<u4"))[..., 0]
    ids &= 0xFFFFFF
    return ids.view(np.int32)


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """RGB encoding (H, W, 3) uint8 of segment ids (H, W), each in [0, 256^3 - 1]."""
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"expected an integer id map (H, W), got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_RGB_ID):
        raise ValueError(f"segment ids must be in [0, {MAX_RGB_ID}] to encode as RGB, "
                         f"got range [{ids.min()}, {ids.max()}]")
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# In-memory annotation


@dataclass
class Segment:
    """One segment of a panoptic annotation, as in COCO `segments_info`. bbox is (x, y, w, h)."""

    id: int
    category_id: int
    iscrowd: bool = False
    area: int = 0
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)

    def to_json(self) -> dict:
        return {"id": int(self.id), "category_id": int(self.category_id), "iscrowd": int(self.iscrowd),
                "area": int(self.area), "bbox": [int(v) for v in self.bbox]}

    @classmethod
    def from_json(cls, data: dict) -> Segment:
        try:
            return cls(id=int(data["id"]), category_id=int(data["category_id"]),
                       iscrowd=bool(data.get("iscrowd", 0)), area=int(data.get("area", 0)),
                       bbox=tuple(int(v) for v in data.get("bbox", (0, 0, 0, 0))))
        except KeyError as error:
            raise ValueError(f"segment {data!r} lacks the field {error}; expected id and category_id") from None


@dataclass
class PanopticAnnotation:
    """Segment ids (H, W) int32 with 0 = void, and the segments by id.

    Pixels whose id has no entry in `segments` are void too (COCO treats them so).
    """

    ids: np.ndarray
    segments: dict[int, Segment]
    file_name: str = ""
    image_id: int | str | None = None
    extra: dict = field(default_factory=dict)  # other per-annotation JSON fields, kept on write

    @property
    def height(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])


def segment_stats(ids: np.ndarray) -> dict[int, tuple[int, tuple[int, int, int, int]]]:
    """Area and COCO box (x, y, w, h) of every non-zero id of an (H, W) map, in one pass."""
    ids = np.asarray(ids)
    height, width = ids.shape
    flat = ids.ravel()
    if flat.size == 0:
        return {}
    if flat.min() >= 0 and flat.max() < (1 << 20):
        # Small ids (Cityscapes, our maps): a dense lookup is much faster than sorting.
        present = np.bincount(flat, minlength=1) > 0
        unique = np.flatnonzero(present)
        lookup = np.zeros(present.size, dtype=np.int64)
        lookup[unique] = np.arange(unique.size)
        inverse = lookup[flat]
    else:
        unique, inverse = np.unique(flat, return_inverse=True)
    n = unique.size
    inverse = inverse.reshape(height, width)
    areas = np.bincount(inverse.ravel(), minlength=n)
    rows = np.bincount((inverse * height + np.arange(height)[:, None]).ravel(), minlength=n * height)
    cols = np.bincount((inverse * width + np.arange(width)[None, :]).ravel(), minlength=n * width)
    rows = rows.reshape(n, height) > 0
    cols = cols.reshape(n, width) > 0
    y0 = rows.argmax(1)
    y1 = height - 1 - rows[:, ::-1].argmax(1)
    x0 = cols.argmax(1)
    x1 = width - 1 - cols[:, ::-1].argmax(1)
    return {int(unique[i]): (int(areas[i]), (int(x0[i]), int(y0[i]), int(x1[i] - x0[i] + 1), int(y1[i] - y0[i] + 1)))
            for i in range(n) if unique[i] != 0}


def annotation_from_ids(ids: np.ndarray, category_of: dict[int, int], crowd: Iterable[int] = (),
                        file_name: str = "", image_id: int | str | None = None) -> PanopticAnnotation:
    """An annotation of an id map whose segment categories are known; area and bbox computed here.

    Ids present in the map but absent from `category_of` become void (0).
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"expected an integer id map (H, W), got {ids.dtype} {ids.shape}")
    ids = ids.astype(np.int32)
    stats = segment_stats(ids)
    unknown = [i for i in stats if i not in category_of]
    if unknown:
        ids = np.where(np.isin(ids, unknown), 0, ids).astype(np.int32)
    crowd = set(crowd)
    segments = {i: Segment(i, int(category_of[i]), i in crowd, area, bbox)
                for i, (area, bbox) in stats.items() if i in category_of}
    return PanopticAnnotation(ids=ids, segments=segments, file_name=file_name, image_id=image_id)


# --------------------------------------------------------------------------------------------
# PNG I/O


def read_png(path: str | Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """A PNG as stored (BGR order for colour), with a clear error when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ValueError(f"cannot decode image file {path} (expected a PNG/JPEG)")
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 (H, W, 3)."""
    return read_png(path, cv2.IMREAD_COLOR_RGB)


def write_rgb(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 (H, W, 3) image; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)):
        raise ValueError(f"cannot write image file {path}")


def write_gray(path: str | Path, pixels: np.ndarray) -> None:
    """Write a single-channel uint8 or uint16 (H, W) image as PNG."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a uint8 or uint16 (H, W) image, got {pixels.dtype} {pixels.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), pixels):
        raise ValueError(f"cannot write image file {path}")


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Segment ids (H, W) int32 of an RGB-encoded panoptic PNG."""
    if read_image_png_u8 is not None:
        try:
            return rgb_to_id(read_image_png_u8(str(path), "rgb"))
        except Exception:  # not 8-bit RGB (palette, RGBA, 16-bit), or unreadable: OpenCV reads it or says why
            pass
    image = read_png(path)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{path}: expected an 8-bit RGB panoptic PNG, got {image.dtype} {image.shape}")
    return rgb_to_id(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def write_panoptic_png(path: str | Path, ids: np.ndarray) -> None:
    """Write segment ids (H, W) as an RGB-encoded panoptic PNG."""
    write_rgb(path, id_to_rgb(ids))


# --------------------------------------------------------------------------------------------
# COCO panoptic layout


def _load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"panoptic JSON not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    missing = [key for key in ("annotations", "categories") if key not in data]
    if missing:
        raise ValueError(f"{path}: not a COCO panoptic JSON, missing {', '.join(missing)} "
                         "(expected images, annotations, categories)")
    return data


class AnnotationList(Sequence):
    """The annotations of a panoptic JSON; each PNG is read only when its item is asked for."""

    def __init__(self, entries: list[dict], png_dir: Path, category_map: dict[int, int] | None = None) -> None:
        self.entries = entries
        self.png_dir = png_dir
        self.category_map = category_map  # dataset category id -> new id; unmapped ones become void

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> PanopticAnnotation:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("AnnotationList does not support slices; index one item at a time")
        entry = self.entries[index]
        ids = read_panoptic_png(self.png_dir / entry["file_name"])
        segments = [Segment.from_json(s) for s in entry.get("segments_info", [])]
        if self.category_map is not None:
            segments = [Segment(s.id, self.category_map[s.category_id], s.iscrowd, s.area, s.bbox)
                        for s in segments if s.category_id in self.category_map]
            kept = np.array([s.id for s in segments], dtype=np.int32)
            ids = np.where(np.isin(ids, kept) | (ids == 0), ids, 0).astype(np.int32)
        extra = {k: v for k, v in entry.items() if k not in ("file_name", "image_id", "segments_info")}
        return PanopticAnnotation(ids=ids, segments={s.id: s for s in segments}, file_name=entry["file_name"],
                                  image_id=entry.get("image_id"), extra=extra)

    def __iter__(self) -> Iterator[PanopticAnnotation]:
        return (self[i] for i in range(len(self)))

    def find(self, file_name: str) -> PanopticAnnotation:
        """The annotation whose PNG is `file_name` (or whose image_id is its stem)."""
        for i, entry in enumerate(self.entries):
            if entry["file_name"] == file_name or str(entry.get("image_id")) == Path(file_name).stem:
                return self[i]
        raise KeyError(f"no annotation for {file_name!r}")


def read_coco_panoptic(json_path: str | Path, png_dir: str | Path | None = None) -> tuple[list[dict], AnnotationList]:
    """Categories and (lazily read) annotations of a COCO panoptic JSON + PNG folder.

    `png_dir` defaults to the folder named like the JSON without `.json`, COCO's own layout.
    """
    json_path = Path(json_path)
    png_dir = Path(png_dir) if png_dir is not None else json_path.with_suffix("")
    if not png_dir.is_dir():
        raise FileNotFoundError(f"panoptic PNG folder not found: {png_dir}")
    data = _load_json(json_path)
    return data["categories"], AnnotationList(data["annotations"], png_dir)


def read_coco_images(json_path: str | Path) -> list[dict]:
    """The "images" entries of a panoptic JSON (id, file_name, height, width)."""
    return _load_json(json_path).get("images", [])


class CocoPanopticWriter:
    """Write a COCO panoptic JSON + PNG folder one annotation at a time; the JSON is written on close.

    Areas and boxes are computed from the id maps (the PNG is the truth).
    """

    def __init__(self, json_path: str | Path, png_dir: str | Path | None, categories: list[dict]) -> None:
        self.json_path = Path(json_path)
        self.png_dir = Path(png_dir) if png_dir is not None else self.json_path.with_suffix("")
        self.categories = categories
        self.entries: list[dict] = []
        self.images: list[dict] = []

    def add(self, annotation: PanopticAnnotation, image: dict | None = None) -> None:
        """Write the annotation's PNG and record it; `image` is its "images" entry (default: made from it)."""
        if not annotation.file_name:
            raise ValueError("every annotation needs a file_name (its PNG name) to be written")
        write_panoptic_png(self.png_dir / annotation.file_name, annotation.ids)
        stats = segment_stats(annotation.ids)
        segments = []
        for sid, segment in sorted(annotation.segments.items()):
            if sid not in stats:
                continue  # a segment with no pixels is not a segment in COCO panoptic
            area, bbox = stats[sid]
            segments.append(Segment(sid, segment.category_id, segment.iscrowd, area, bbox).to_json())
        image_id = annotation.image_id if annotation.image_id is not None else Path(annotation.file_name).stem
        self.entries.append({**annotation.extra, "image_id": image_id, "file_name": annotation.file_name,
                             "segments_info": segments})
        self.images.append(image if image is not None else {"id": image_id, "file_name": annotation.file_name,
                                                            "height": annotation.height, "width": annotation.width})

    def close(self) -> None:
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps({"images": self.images, "annotations": self.entries,
                                              "categories": self.categories}))

    def __enter__(self) -> CocoPanopticWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()


def write_coco_panoptic(json_path: str | Path, png_dir: str | Path | None, annotations: Iterable[PanopticAnnotation],
                        categories: list[dict], images: list[dict] | None = None) -> None:
    """Write annotations as a COCO panoptic JSON + PNG folder (`png_dir` defaults to the JSON's name).

    Without `images`, one image entry per annotation is made from its image_id (default: the file
    stem), file name and size.
    """
    annotations = list(annotations)
    if images is not None and len(images) != len(annotations):
        raise ValueError(f"{len(images)} image entries for {len(annotations)} annotations")
    with CocoPanopticWriter(json_path, png_dir, categories) as writer:
        for i, annotation in enumerate(annotations):
            writer.add(annotation, images[i] if images is not None else None)


def label_set_categories(label_set: LabelSet) -> list[dict]:
    """COCO categories of a label set: id = train id, name, isthing, color."""
    rows = zip(label_set.names, label_set.thing, label_set.colors, strict=True)
    return [{"id": i, "name": name, "supercategory": name, "isthing": int(thing), "color": list(color)}
            for i, (name, thing, color) in enumerate(rows)]


# --------------------------------------------------------------------------------------------
# Cityscapes


# Cityscapes label id -> train id (cityscapesscripts' labels.py); 255 = ignored in evaluation.
CITYSCAPES_LABEL_TO_TRAIN: dict[int, int] = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255,  # unlabeled, ego vehicle, border, out of roi, ...
    7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255,  # road ... tunnel
    17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,  # pole, polegroup, traffic light/sign, veg., terrain, sky
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18,  # person ... bicycle
}
# Label ids of classes with instances (things, including caravan and trailer, which are ignored).
CITYSCAPES_INSTANCE_LABELS = frozenset((24, 25, 26, 27, 28, 29, 30, 31, 32, 33))


def cityscapes_panoptic_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(JSON, PNG folder) of a split in Cityscapes' layout: gtFine/cityscapes_panoptic_<split>[.json]."""
    folder = Path(root) / "gtFine" / f"cityscapes_panoptic_{split}"
    return folder.with_suffix(".json"), folder


def cityscapes_image_path(root: str | Path, split: str, image_file_name: str) -> Path:
    """leftImg8bit/<split>/<city>/<file>, the city being the file name's first `_` field."""
    return Path(root) / "leftImg8bit" / split / image_file_name.split("_")[0] / image_file_name


def cityscapes_label_lut() -> np.ndarray:
    """Lookup table (256,) uint8: Cityscapes label id -> train id, 255 for ignored or unknown ids."""
    lut = np.full(256, VOID_CLASS, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


def cityscapes_labels_to_train(label_ids: np.ndarray) -> np.ndarray:
    """Train-id map (H, W) uint8 of a `*_labelIds.png` map."""
    label_ids = np.asarray(label_ids)
    if label_ids.ndim != 2:
        raise ValueError(f"expected a label id map (H, W), got shape {label_ids.shape}")
    return cityscapes_label_lut()[np.clip(label_ids, 0, 255).astype(np.intp)]


def read_cityscapes_panoptic(json_path: str | Path, png_dir: str | Path | None = None,
                             train_ids: bool = True) -> tuple[list[dict], AnnotationList]:
    """Categories and annotations of Cityscapes' `cityscapes_panoptic_<split>.json` + PNG folder.

    With `train_ids`, categories are mapped to the 19 train ids (CITYSCAPES_LABEL_TO_TRAIN); segments
    of ignored classes become void. A JSON already written with train ids (createPanopticImgs
    --use-train-id) is recognised and left as is.
    """
    categories, annotations = read_coco_panoptic(json_path, png_dir)
    if not train_ids or _uses_train_ids(categories):
        return categories, annotations
    mapping = {c["id"]: CITYSCAPES_LABEL_TO_TRAIN[c["id"]] for c in categories
               if CITYSCAPES_LABEL_TO_TRAIN.get(c["id"], VOID_CLASS) != VOID_CLASS}
    mapped = [{**c, "id": mapping[c["id"]]} for c in categories if c["id"] in mapping]
    return sorted(mapped, key=lambda c: c["id"]), AnnotationList(annotations.entries, annotations.png_dir, mapping)


def _uses_train_ids(categories: list[dict]) -> bool:
    # Train-id categories are 0..18 with road = 0; label-id categories start at road = 7.
    return any(c["id"] == 0 for c in categories)


def cityscapes_from_instance_ids(instance_ids: np.ndarray, file_name: str = "") -> PanopticAnnotation:
    """Annotation with train-id categories of a `*_instanceIds.png` map.

    There, id = labelId * 1000 + k for thing instances and id = labelId for stuff and for thing
    regions without instances (crowd). Ignored classes become void.
    """
    instance_ids = np.asarray(instance_ids)
    if instance_ids.ndim != 2 or not np.issubdtype(instance_ids.dtype, np.integer):
        raise ValueError(f"expected an instanceIds map (H, W) of integers, got {instance_ids.dtype} "
                         f"{instance_ids.shape}")
    ids = instance_ids.astype(np.int32)
    present = np.unique(ids)
    label_ids = np.where(present >= 1000, present // 1000, present)
    category_of, crowd = {}, []
    for segment_id, label_id in zip(present.tolist(), label_ids.tolist(), strict=True):
        train_id = CITYSCAPES_LABEL_TO_TRAIN.get(label_id, VOID_CLASS)
        if segment_id == 0 or train_id == VOID_CLASS:
            continue
        category_of[segment_id] = train_id
        if segment_id < 1000 and label_id in CITYSCAPES_INSTANCE_LABELS:
            crowd.append(segment_id)
    image_id = file_name.replace("_gtFine_instanceIds.png", "") if file_name else None
    return annotation_from_ids(ids, category_of, crowd, file_name=file_name, image_id=image_id)


def read_cityscapes_instance_ids(path: str | Path) -> PanopticAnnotation:
    """`cityscapes_from_instance_ids` of a 16-bit `*_instanceIds.png` file."""
    image = read_png(path)
    if image.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel instanceIds PNG, got shape {image.shape}")
    return cityscapes_from_instance_ids(image, Path(path).name)


# --------------------------------------------------------------------------------------------
# Our pipeline's id maps (id = class * label_divisor + n, n = 1, 2, ... per class; -1 void)


def from_id_map(panoptic: np.ndarray, label_divisor: int, label_set: LabelSet,
                file_name: str = "") -> PanopticAnnotation:
    """Annotation of a pipeline id map. Segment id = panoptic id + 1, so 0 is void.

    Category ids are train ids of `label_set`. Thing pixels with instance 0 (a thing region without
    an instance) become a crowd segment, as in Cityscapes.
    """
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2 or not np.issubdtype(panoptic.dtype, np.integer):
        raise ValueError(f"expected a panoptic id map int32 (H, W), got {panoptic.dtype} {panoptic.shape}")
    if label_divisor <= 0:
        raise ValueError(f"label_divisor must be positive, got {label_divisor}")
    present = np.unique(panoptic)
    if present.size and present[0] < VOID_ID:
        raise ValueError(f"panoptic ids must be >= {VOID_ID} (void), got {present[0]}")
    present = present[present != VOID_ID]
    classes = present // label_divisor
    bad = classes[classes >= label_set.num_classes]
    if bad.size:
        raise ValueError(f"panoptic id map has class {bad[0]} (id {present[classes >= label_set.num_classes][0]}), "
                         f"but label set {label_set.name!r} has {label_set.num_classes} classes "
                         f"(label_divisor {label_divisor})")
    pairs = list(zip(present.tolist(), classes.tolist(), strict=True))
    category_of = {p + 1: c for p, c in pairs}
    crowd = [p + 1 for p, c in pairs if label_set.thing[c] and p % label_divisor == 0]
    return annotation_from_ids(panoptic.astype(np.int64) + 1, category_of, crowd, file_name=file_name)


def to_id_map(annotation: PanopticAnnotation, label_divisor: int,
              classes: LabelSet | Sequence[dict]) -> np.ndarray:
    """Pipeline id map int32 (H, W) of an annotation whose categories are train ids.

    `classes` says which categories are things: a label set, or COCO categories (with "isthing").
    Stuff and crowd segments get class * label_divisor; thing instances are numbered 1, 2, ... per
    class in increasing segment id order, so `to_id_map(from_id_map(m))` gives back a map whose
    instances were numbered from 1 without gaps. Void and unknown segments get -1.
    """
    if label_divisor <= 0:
        raise ValueError(f"label_divisor must be positive, got {label_divisor}")
    thing_of = _thing_flags(classes)
    values = {}
    next_instance: dict[int, int] = {}
    for sid in sorted(annotation.segments):
        category, instance = _segment_class(annotation.segments[sid], sid, thing_of), 0
        if thing_of[category] and not annotation.segments[sid].iscrowd:
            instance = next_instance.get(category, 0) + 1
            next_instance[category] = instance
            if instance >= label_divisor:
                raise ValueError(f"more than {label_divisor - 1} instances of class {category}; "
                                 "use a larger label_divisor")
        values[sid] = category * label_divisor + instance
    return _map_segments(annotation.ids, values, VOID_ID).astype(np.int32)


def semantic_and_instance(annotation: PanopticAnnotation,
                          classes: LabelSet | Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Semantic map uint8 (255 void) and instance map int32 of an annotation with train-id categories.

    Instances are numbered 1..N over all thing segments of the image (unique across classes);
    stuff, crowd and void pixels get 0. This is the training ground truth's form.
    """
    thing_of = _thing_flags(classes)
    classes_of, instances_of = {}, {}
    for sid in sorted(annotation.segments):
        segment = annotation.segments[sid]
        classes_of[sid] = _segment_class(segment, sid, thing_of)
        if thing_of[segment.category_id] and not segment.iscrowd:
            instances_of[sid] = len(instances_of) + 1
    semantic = _map_segments(annotation.ids, classes_of, VOID_CLASS).astype(np.uint8)
    return semantic, _map_segments(annotation.ids, instances_of, 0).astype(np.int32)


def _segment_class(segment: Segment, sid: int, thing_of: dict[int, bool]) -> int:
    if segment.category_id not in thing_of:
        raise ValueError(f"segment {sid} has category {segment.category_id}, not one of the classes "
                         f"{sorted(thing_of)}; map dataset ids to train ids first")
    return segment.category_id


def _map_segments(ids: np.ndarray, values: dict[int, int], default: int) -> np.ndarray:
    """ids (H, W) mapped through `values` (segment id -> value); ids not in it get `default`."""
    keys = np.array(sorted(values), dtype=np.int64)
    if keys.size == 0:
        return np.full(ids.shape, default, dtype=np.int64)
    mapped = np.array([values[k] for k in keys.tolist()], dtype=np.int64)
    position = np.clip(np.searchsorted(keys, ids), 0, keys.size - 1)
    return np.where(keys[position] == ids, mapped[position], default)


def _thing_flags(classes: LabelSet | Sequence[dict]) -> dict[int, bool]:
    """Category id -> is-thing of a label set or of COCO categories."""
    if isinstance(classes, LabelSet):
        return dict(enumerate(classes.thing))
    try:
        return {int(c["id"]): bool(c["isthing"]) for c in classes}
    except (KeyError, TypeError):
        raise ValueError("expected a LabelSet or COCO categories with 'id' and 'isthing'") from None

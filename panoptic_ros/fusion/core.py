"""The shared back half of every fusion: per-cell segment labels -> panoptic id map, semantic map,
instance table.

Every method's front half ends in the same thing: a label per cell of its label map (one cell per
input pixel, or per stride x stride block), naming one of Kc thing candidates, one of the label
set's stuff classes, or void, plus each candidate's class, score and validity (`Segments`). From
there the assembly is common:

- per-segment row/column pixel counts -> area, inclusive box, centroid (in input pixels),
- stuff segments smaller than `min_stuff_area` pixels and candidates without pixels become void,
- table rows: valid things by descending score (equal scores: lower candidate index first), then
  valid stuff by class id; rows after `num_instances` are zeros,
- panoptic id = class * label_divisor + n for things, n = 1, 2, ... numbering the things of each
  class by descending score (as Panoptic-DeepLab and Cityscapes do), class * label_divisor for
  stuff, -1 for void; semantic map = the segment's class (a PSN thing takes its instance's voted
  class), 255 for void,
- a label map coarser than the input is upsampled in blocks, which keeps the statistics exact.

All statistics come from per-row label histograms (`label_counts_per_row`: no scatter-add, which
TensorRT has only as a plugin), exact in float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from panoptic_ros.classes import VOID_CLASS, VOID_ID, LabelSet
from panoptic_ros.fusion.static_ops import block_upsample, place_table, read_places
from panoptic_ros.pipeline_io import INSTANCE_COLUMNS

FUSION_STRIDE = 4  # every fusion works on the stride-4 grid of the input


class Segments(NamedTuple):
    """A front half's result.

    labels: (h, w) int64: k < Kc for thing candidate k, Kc + s for the s-th stuff class of the label
    set, Kc + S for void. thing_class (Kc,) int64 class ids, thing_score (Kc,) float32,
    thing_valid (Kc,) bool. converged: 0-d bool, every unrolled sequential rule reached its fixed
    point; candidates_dropped: 0-d int64, valid candidates that did not fit the Kc slots.
    """

    labels: Tensor
    thing_class: Tensor
    thing_score: Tensor
    thing_valid: Tensor
    converged: Tensor
    candidates_dropped: Tensor


class SemanticLabels(nn.Module):
    """Maps semantic class ids (h, w) to segment labels: stuff classes to their stuff segment, thing
    classes (pixels no instance claimed) to void."""

    def __init__(self, label_set: LabelSet, num_candidates: int) -> None:
        super().__init__()
        num_stuff = len(label_set.stuff_ids)
        lookup = torch.full((label_set.num_classes,), num_candidates + num_stuff, dtype=torch.int64)
        for s, class_id in enumerate(label_set.stuff_ids):
            lookup[class_id] = num_candidates + s
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, semantic: Tensor) -> Tensor:
        return self.lookup[semantic]


class PanopticAssembler(nn.Module):
    """The back half: Segments -> (panoptic, semantic, instances, num_instances).

    `stride` is the side, in input pixels, of one cell of the label map (1: labels per input pixel).
    """

    def __init__(self, label_set: LabelSet, num_candidates: int, max_instances: int,
                 stride: int = FUSION_STRIDE) -> None:
        super().__init__()
        self.num_candidates = num_candidates
        self.max_instances = max_instances
        self.num_stuff = len(label_set.stuff_ids)
        self.stride = stride
        self.register_buffer("stuff_class", torch.tensor(label_set.stuff_ids, dtype=torch.int64), persistent=False)

    @property
    def num_rows(self) -> int:
        return self.max_instances + self.num_stuff

    def forward(self, segments: Segments, min_stuff_area: Tensor,
                label_divisor: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        labels = segments.labels.to(torch.int32)  # half the memory traffic of int64 on every full-size pass
        device = labels.device
        kc, num_segments = self.num_candidates, self.num_candidates + self.num_stuff
        s = self.stride

        # Per-segment pixel counts in every row and column of the label map (void is the last label).
        # One gather of the digits serves both: the columns' digits are the rows' transposed.
        digits = label_digits(labels, num_segments + 1)
        rows = count_per_row(digits)[:num_segments]  # (segments, h)
        cols = count_per_row(digits.transposed())[:num_segments]  # (segments, w)
        cells = rows.sum(dim=1)
        area = cells * float(s * s)

        segment = torch.arange(num_segments, device=device)
        is_thing = segment < kc
        # (Logical ops, not Where: ONNX Runtime has no bool Where.)
        no_stuff = torch.zeros(self.num_stuff, dtype=torch.bool, device=device)
        valid_thing = is_thing & torch.cat((segments.thing_valid, no_stuff))
        valid = (valid_thing | (~is_thing & (area >= min_stuff_area))) & (cells > 0)
        row, number = self._table_rows(segments.thing_score, segments.thing_class, valid)
        valid = valid & (row < self.num_rows)

        seg_class = torch.cat((segments.thing_class, self.stuff_class))
        divisor = label_divisor.to(torch.int64)
        seg_id = seg_class * divisor + torch.where(is_thing, number, torch.zeros_like(number))
        stats = self._statistics(rows, cols, area, seg_id, seg_class, segments.thing_score)

        # Table: row r holds the valid segment whose row is r (a one-hot pick, exact in any precision).
        picks = valid[None, :] & (row[None, :] == torch.arange(self.num_rows, device=device)[:, None])
        index = (picks.to(torch.int64) * segment[None, :]).sum(dim=1)
        row_valid = picks.to(torch.int32).amax(dim=1) > 0
        picked = stats[index]
        instances = torch.where(row_valid[:, None], picked, torch.zeros_like(picked))
        num_instances = valid.to(torch.int32).sum(dtype=torch.int32)

        # Maps: gather each cell's segment id / class (void and dropped segments -> -1 / 255).
        void_id = torch.full((1,), VOID_ID, dtype=torch.int64, device=device)
        void_class = torch.full((1,), VOID_CLASS, dtype=torch.int64, device=device)
        id_of = torch.cat((torch.where(valid, seg_id, void_id), void_id)).to(torch.int32)
        class_of = torch.cat((torch.where(valid, seg_class, void_class), void_class)).to(torch.int32)
        panoptic, semantic = lookup_columns([id_of, class_of], labels)
        if s > 1:
            panoptic, semantic = block_upsample(panoptic, s), block_upsample(semantic, s)
        # Through float: TensorRT 8.x casts to uint8 only from float types.
        semantic = semantic.to(torch.float32).to(torch.uint8)
        return panoptic, semantic, instances, num_instances

    def _table_rows(self, thing_score: Tensor, thing_class: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """(row, number) of each segment. Rows: valid things by descending score (equal scores: lower
        candidate index first), the first max_instances of them, then valid stuff by class. number:
        a thing's 1-based rank among the valid things of its class (0 for stuff)."""
        kc = self.num_candidates
        valid_thing = valid[:kc]
        index = torch.arange(kc, device=valid.device)
        tie = (thing_score[:, None] == thing_score[None, :]) & (index[:, None] < index[None, :])
        better = ((thing_score[:, None] > thing_score[None, :]) | tie) & valid_thing[:, None]  # [i, j]: i before j
        thing_rank = better.to(torch.int64).sum(dim=0)
        same_class = thing_class[:, None] == thing_class[None, :]
        number = (better & same_class).to(torch.int64).sum(dim=0) + 1
        # Things beyond K rows are dropped; the stuff rows follow the kept things.
        kept_things = valid_thing & (thing_rank < self.max_instances)
        num_things = kept_things.to(torch.int64).sum()
        stuff = torch.arange(self.num_stuff, device=valid.device)
        stuff_before = (stuff[:, None] < stuff[None, :]) & valid[kc:, None]  # [s', s]: valid stuff s' before s
        stuff_rank = num_things + stuff_before.to(torch.int64).sum(dim=0)
        thing_row = torch.where(kept_things, thing_rank, torch.full_like(thing_rank, self.num_rows))
        return torch.cat((thing_row, stuff_rank)), torch.cat((number, torch.zeros_like(stuff)))

    def _statistics(self, rows: Tensor, cols: Tensor, area: Tensor, seg_id: Tensor, seg_class: Tensor,
                    thing_score: Tensor) -> Tensor:
        """(segments, len(INSTANCE_COLUMNS)) float32, in input pixels, from float per-row/column counts."""
        s = self.stride
        h, w = rows.shape[1], cols.shape[1]
        device = rows.device
        y_index = torch.arange(h, device=device)
        x_index = torch.arange(w, device=device)
        y1 = torch.where(rows > 0, y_index, torch.full_like(y_index, h)).amin(dim=1) * s
        y2 = torch.where(rows > 0, y_index, torch.full_like(y_index, -1)).amax(dim=1) * s + (s - 1)
        x1 = torch.where(cols > 0, x_index, torch.full_like(x_index, w)).amin(dim=1) * s
        x2 = torch.where(cols > 0, x_index, torch.full_like(x_index, -1)).amax(dim=1) * s + (s - 1)
        # A cell's pixels centre on i * s + (s - 1) / 2.
        y_centre = y_index.to(torch.float32) * s + (s - 1) / 2
        x_centre = x_index.to(torch.float32) * s + (s - 1) / 2
        count = (area / float(s * s)).clamp(min=1.0)
        centroid_y = (rows * y_centre).sum(dim=1) / count
        centroid_x = (cols * x_centre).sum(dim=1) / count
        score = torch.cat((thing_score, torch.ones(self.num_stuff, device=device)))
        columns = {
            "valid": torch.ones_like(area), "id": seg_id.to(torch.float32), "class_id": seg_class.to(torch.float32),
            "score": score, "x1": x1.to(torch.float32), "y1": y1.to(torch.float32), "x2": x2.to(torch.float32),
            "y2": y2.to(torch.float32), "area": area, "centroid_x": centroid_x, "centroid_y": centroid_y,
        }
        return torch.stack([columns[name] for name in INSTANCE_COLUMNS], dim=1)


def lookup_columns(tables: list[Tensor], index: Tensor) -> list[Tensor]:
    """[table[index] for table in tables], tables (L,) of one dtype: one Gather of (L, len(tables))
    rows, which in ONNX Runtime costs about what one single-value Gather does (its cost is per index)."""
    rows = torch.index_select(torch.stack(tables, dim=1), 0, index.reshape(-1))
    return [rows[:, n].reshape(index.shape) for n in range(len(tables))]


class LabelDigits(NamedTuple):
    """A label map written as two digits, label = hi * base + lo, ready to be counted per row:
    hi (h, w) and the lo digit's one-hot packed (h, w, channels) (see count_per_row)."""

    hi: Tensor
    lo_packed: Tensor
    base: int
    hi_count: int
    bits: int
    num_labels: int

    def transposed(self) -> LabelDigits:
        """The same digits of the transposed map (its rows are the columns), without gathering again."""
        return self._replace(hi=self.hi.T.contiguous(), lo_packed=self.lo_packed.transpose(0, 1).contiguous())


def label_digits(labels: Tensor, num_labels: int) -> LabelDigits:
    """(h, w) labels in [0, num_labels) as LabelDigits, counted per row by count_per_row, and per
    column by count_per_row of their transposed(): the packed places hold any count up to max(h, w).

    The lo digit fills every place of its channels (base = channels * places per channel). Per
    cell, the hi one-hot writes hi_count floats (after a compare and a cast) and the gather
    `channels`: the split minimises hi_count + channels, ties going to fewer hi digits (at
    1024x2048 and 106 labels, 6 hi digits x 9 channels count ~15% faster than 9 x 6).
    """
    height, width = (int(n) for n in labels.shape)
    bits = max(height, width).bit_length()  # a row or column count is at most max(h, w) < 2^bits
    per = 24 // bits
    channels = min(range(1, -(-num_labels // per) + 1), key=lambda c: (c + -(-num_labels // (c * per)), -c))
    base = channels * per
    # Labels are >= 0: truncating division is one Div (floor division exports as six ops).
    hi = torch.div(labels, base, rounding_mode="trunc")
    # Gathered by the label itself (row L: the packed one-hot of L's lo digit), so lo is never computed.
    lo_digit = torch.arange(num_labels) % base
    table = place_table(base, bits, base, labels.device)[lo_digit.to(labels.device)]  # (num_labels, channels)
    # (index_select: faster than table[labels])
    lo_packed = torch.index_select(table, 0, labels.reshape(-1)).reshape(height, width, -1)
    return LabelDigits(hi, lo_packed, base, -(-num_labels // base), bits, num_labels)


def count_per_row(digits: LabelDigits) -> Tensor:
    """LabelDigits of an (h, w) map -> (num_labels, h) float32: how many cells of each row hold each label.

    A histogram without scatter-add (TensorRT has none without a plugin) and without a
    (num_labels, h, w) one-hot: each label is written as two digits, hi * base + lo, and one batched
    mat-mul of the hi digit's one-hot (h, hi_count, w) with the lo digit's (h, w, base) counts every
    (hi, lo) pair per row. The lo one-hot is packed: several lo digits share one float32 channel as
    places of radix 2^bits > max(h, w) (static_ops.place_table: a Gather from a small table, a fraction
    of the one-hot's writes), read back with read_places. Exact in float32: every sum is an integer
    below 2^24.
    """
    height = digits.hi.shape[0]
    hi_values = torch.arange(digits.hi_count, device=digits.hi.device, dtype=digits.hi.dtype)[None, :, None]
    # (h, hi_count, w): the layout whose compare is fast
    hi_one_hot = (digits.hi[:, None, :] == hi_values).to(torch.float32)
    counts = read_places(torch.matmul(hi_one_hot, digits.lo_packed), digits.bits)  # (h, hi_count, channels * places)
    return counts[:, :, :digits.base].reshape(height, -1)[:, :digits.num_labels].T

"""Literal reference of STQ and identity switches (see tracking.stq for the definitions), from pixel sets.

Slow on purpose: every track is the Python set of its (frame, row, column) pixels, and every quantity is
computed from those sets exactly as the definitions say. Only for proving tracking.stq right on small inputs.
"""

from __future__ import annotations

import math

import numpy as np

from panoptic_ros.classes import VOID_CLASS
from panoptic_ros.tracking.stq import MATCH_IOU, STQResult


def stq_reference(frames: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                  thing: tuple[bool, ...]) -> STQResult:
    """STQ of a sequence of (gt classes, gt track ids, predicted classes, predicted track ids) frames."""
    gt_tracks: dict[tuple[int, int], set] = {}  # (class, track id) -> pixels
    predicted_tracks: dict[tuple[int, int], set] = {}
    gt_class_pixels: dict[int, set] = {c: set() for c in range(len(thing))}
    predicted_class_pixels: dict[int, set] = {c: set() for c in range(len(thing))}
    switches_per_frame = []
    last_match: dict[tuple[int, int], tuple[int, int]] = {}
    for t, (gt_classes, gt_ids, predicted_classes, predicted_ids) in enumerate(frames):
        frame_gt: dict[tuple[int, int], set] = {}
        frame_predicted: dict[tuple[int, int], set] = {}
        height, width = gt_classes.shape
        for y in range(height):
            for x in range(width):
                pixel = (t, y, x)
                gc, gi = int(gt_classes[y, x]), int(gt_ids[y, x])
                pc, pi = int(predicted_classes[y, x]), int(predicted_ids[y, x])
                if gc != VOID_CLASS:  # SQ: void ground truth is not evaluated
                    gt_class_pixels[gc].add(pixel)
                    if pc != VOID_CLASS:
                        predicted_class_pixels[pc].add(pixel)
                gt_thing = gc != VOID_CLASS and thing[gc]
                if gt_thing and gi == 0:  # crowd: left out of the association
                    continue
                if gt_thing:
                    frame_gt.setdefault((gc, gi), set()).add(pixel)
                if pc != VOID_CLASS and thing[pc]:
                    frame_predicted.setdefault((pc, pi), set()).add(pixel)
        for key, pixels in frame_gt.items():
            gt_tracks.setdefault(key, set()).update(pixels)
        for key, pixels in frame_predicted.items():
            predicted_tracks.setdefault(key, set()).update(pixels)
        switches = 0
        for g, g_pixels in frame_gt.items():
            for p, p_pixels in frame_predicted.items():
                if len(g_pixels & p_pixels) / len(g_pixels | p_pixels) > MATCH_IOU:
                    if g in last_match and last_match[g] != p:
                        switches += 1
                    last_match[g] = p
        switches_per_frame.append(switches)

    aq_of = {}
    for g, g_pixels in gt_tracks.items():
        total = 0.0
        for p_pixels in predicted_tracks.values():
            tpa = len(p_pixels & g_pixels)
            if tpa == 0:
                continue
            fpa = len(p_pixels - g_pixels)
            fna = len(g_pixels - p_pixels)
            total += tpa * (tpa / (tpa + fpa + fna))
        aq_of[g] = total / len(g_pixels)
    aq = sum(aq_of.values()) / len(aq_of) if aq_of else 0.0
    aq_per_class = {}
    for c in sorted({g[0] for g in gt_tracks}):
        values = [v for g, v in aq_of.items() if g[0] == c]
        aq_per_class[c] = sum(values) / len(values)

    iou_per_class = {}
    for c in range(len(thing)):
        union = gt_class_pixels[c] | predicted_class_pixels[c]
        if union:
            iou_per_class[c] = len(gt_class_pixels[c] & predicted_class_pixels[c]) / len(union)
    sq = sum(iou_per_class.values()) / len(iou_per_class) if iou_per_class else 0.0
    return STQResult(stq=math.sqrt(aq * sq), aq=aq, sq=sq, aq_per_class=aq_per_class, iou_per_class=iou_per_class,
                     switches_per_frame=switches_per_frame, gt_tracks=len(gt_tracks),
                     predicted_tracks=len(predicted_tracks), num_frames=len(frames))

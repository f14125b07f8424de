"""Evaluation: panoptic quality and mIoU, COCO / Cityscapes panoptic evaluation, reports."""

"""Networks of the five papers, their backbones, FPN and shared box geometry."""

# ImageNet statistics for RGB in [0, 1]. Normalisation is done by the pipeline, not the networks.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

"""The five papers' Cityscapes training recipes as presets of `panoptic-ros train --preset NAME`.

Each preset sets what its paper states (quoted in `source`) and fills what the paper leaves open
with a stated choice (`chosen`: field -> value and reason). Torch-free, like the config.
"""

from __future__ import annotations

from dataclasses import dataclass

from panoptic_ros.training.config import TrainConfig


@dataclass(frozen=True)
class Preset:
    name: str
    model: str
    dataset: str
    values: dict  # TrainConfig fields the paper states or we chose
    source: str  # the paper's own words for the recipe
    chosen: dict  # field -> why, for every value the paper leaves open
    deviations: tuple[str, ...] = ()  # what the preset cannot reproduce, and why

    def config(self, output_dir: str, **overrides) -> TrainConfig:
        """The resolved recipe: TrainConfig defaults < this preset < `overrides`."""
        return TrainConfig(model=self.model, output_dir=output_dir, **{**self.values, **overrides})


_SGD = {"optimizer": "sgd", "momentum": 0.9}
_PAPER = {"width_mult": 1.0, "clip_grad_norm": 0.0}  # full width; no paper clips gradients
_DETECTRON2_WARMUP = "detectron2's default (1000 steps, linear from 0.001)"
_FCOS_WARMUP = "FCOS / maskrcnn-benchmark's default (500 steps, linear from 1/3)"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        "psn-cityscapes", "psn", "cityscapes",
        {"backbone": "resnet18", **_PAPER, "optimizer": "adam", "lr": 5e-5, "min_lr": 1e-7,
         "schedule": "poly", "poly_power": 0.9, "steps": 90_000, "batch_size": 8, "crop": (1024, 2048),
         "scale": (0.5, 2.0), "weight_decay": 1e-4, "warmup_steps": 0, "backbone_lr_mult": 1.0},
        "We train the models for 90000 iterations with ADAM optimizer on 1024 x 2048 crops with batch size 8. "
        "[...] We augment the crops through horizontal flipping and random scaling with factor between 0.5 and "
        "2.0. We decay the learning rate from 5e-5 to 1e-7 with a polynomial scheduler. (sec. 3.1; ResNet-18, "
        "256-channel upsampling path, sec. 2.1)",
        {"poly_power": "0.9, the DeepLab convention (the paper says 'polynomial' only)",
         "weight_decay": "1e-4 as L2 in Adam (not stated; the SwiftNet code's value)",
         "warmup_steps": "0 (none stated)",
         "backbone_lr_mult": "1.0 (one learning rate stated; the SwiftNet code uses 0.25)"}),
    Preset(
        "rtps-cityscapes", "rtps", "cityscapes",
        {"backbone": "resnet50", **_PAPER, **_SGD, "lr": 0.013, "weight_decay": 1e-4,
         "schedule": "multistep", "milestones": (36_000, 44_000), "gamma": 0.1, "steps": 48_000, "batch_size": 8,
         "crop": (896, 1792), "scale": (0.7, 1.3), "freeze_backbone_bn": True, "warmup_steps": 500,
         "warmup_factor": 1 / 3, "backbone_lr_mult": 1.0},
        "our models are trained using a batch size of 1 per GPU [8 V100 GPUs], weight decay of 1e-4, learning "
        "rate of 0.013 for 48k total steps, decreasing by a factor of 0.1 at step 36k and 44k. We apply a random "
        "crop of 1800x900 and re-scale the crops randomly between (0.7, 1.3). [...] All our models use a "
        "ResNet-50 Backbone with ImageNet pretrained weights [...] We freeze BatchNorm layers in the backbone "
        "(sec. 5.3)",
        {"optimizer": "SGD with momentum 0.9 (not stated; FCOS's, which the head follows)",
         "warmup_steps": f"500 at factor 1/3: {_FCOS_WARMUP}; none stated",
         "backbone_lr_mult": "1.0 (none stated)"},
        ("crop 896 x 1792 instead of 900 x 1800: the networks take sides that are multiples of 128 "
         "(0.4% fewer rows and columns)",)),
    Preset(
        "fpsnet-cityscapes", "fpsnet", "cityscapes",
        {"backbone": "resnet50", **_PAPER, **_SGD, "lr": 0.01, "weight_decay": 1e-3, "schedule": "poly",
         "poly_power": 0.9, "min_lr": 0.0, "steps": 200_000, "batch_size": 4, "crop": (512, 1024),
         "scale": (0.5, 1.5), "warmup_steps": 0, "backbone_lr_mult": 1.0},
        "We randomly scale the image with a factor between 0.5 and 1.5, and use a random crop of 512 x 1024 "
        "pixels (sec. IV-B). [...] stochastic gradient descent with a momentum of 0.9. The weight decay is "
        "0.001. We train all networks on a single GPU, with a batch size of 4 images. We use polynomial learning "
        "rate schedule (as in [27]) with an initial learning rate of 0.01 and a power of 0.9. For the main speed "
        "and accuracy experiments, we train the network for 200 k steps. (sec. IV-C; RetinaNet ResNet-50-FPN)",
        {"min_lr": "0 (poly to zero, as DeepLab [27])", "warmup_steps": "0 (none stated)",
         "backbone_lr_mult": "1.0 (none stated)"}),
    Preset(
        "spinet-cityscapes", "spinet", "cityscapes",
        {"backbone": "resnet50", **_PAPER, **_SGD, "lr": 0.01, "weight_decay": 1e-4,
         "schedule": "multistep", "milestones": (80_000, 90_000), "gamma": 0.1, "steps": 95_000, "batch_size": 32,
         "crop": (512, 1024), "scale": (0.5, 2.0), "freeze_backbone_bn": True, "warmup_steps": 1000,
         "warmup_factor": 0.001, "backbone_lr_mult": 1.0},
        "built on top of ImageNet pretrained ResNet-50 backbone, that replaces the first 7x7 convolution with "
        "three 3x3 convolutions. [...] we freeze batch normalization of the layers of the backbone. [...] Using "
        "8 Tesla V100 GPUs [...] The learning rate starts from 0.01 and decreases by a scale factor of 0.1 at "
        "180k and 240k [COCO]. Allocating 4 images per GPU for Cityscapes experiments, the learning rate starts "
        "from 0.01 and decreases at 80k and 90k, terminating the training at 95k. (sec. 5.2)",
        {"optimizer": "SGD, momentum 0.9 (not stated; detectron2's, which CondInst-style code uses)",
         "weight_decay": "1e-4 (not stated; detectron2's default)",
         "gamma": "0.1 (stated for COCO; the Cityscapes sentence says only 'decreases')",
         "crop": "512 x 1024 (not stated; the Cityscapes crop FPSNet uses)",
         "scale": "0.5-2.0 (not stated; PSN's Cityscapes range)",
         "warmup_steps": f"1000 at factor 0.001: {_DETECTRON2_WARMUP}; none stated",
         "backbone_lr_mult": "1.0 (none stated)"},
        ("7x7 ResNet stem, not the paper's three 3x3 convolutions: torchvision's ImageNet weights (the only "
         "ones `--imagenet-weights` loads) have the 7x7 stem",)),
    Preset(
        "lpsnet-cityscapes", "lpsnet", "cityscapes",
        {"backbone": "resnet50", **_PAPER, **_SGD, "lr": 0.01, "weight_decay": 1e-4,
         "schedule": "multistep", "milestones": (9_000,), "gamma": 0.1, "steps": 12_000, "batch_size": 16,
         "crop": (1024, 2048), "scale": (1.0, 1.0), "warmup_steps": 500, "warmup_factor": 1 / 3,
         "backbone_lr_mult": 1.0},
        "We train our model using 8 GPUs, with 2 images per GPU for each mini-batch (sec. 3.5). We train our "
        "network with stochastic gradient descent (SGD). For COCO, we set the initial learning rate as 0.01 [...] "
        "the learning rate is reduced by a factor of 10 [...] Weight decay and momentum are set as 0.0001 and "
        "0.9, respectively. [...] For Cityscapes, we train our method for 12K iterations in total, with the "
        "learning rate decayed at 9K iterations. (sec. 4) [...] the same train/test image size as 1024 (sec. 4.2)",
        {"lr": "0.01 (stated for COCO; no other rate is given)",
         "gamma": "0.1 (the COCO 'factor of 10'; Cityscapes says only 'decayed')",
         "crop": "1024 x 2048: whole images at the stated train size 1024",
         "scale": "1.0-1.0 (no jitter stated for Cityscapes)",
         "warmup_steps": f"500 at factor 1/3: {_FCOS_WARMUP}; none stated",
         "backbone_lr_mult": "1.0 (none stated)"}),
)}

# Every preset starts from ImageNet weights, which are a file the user supplies.
IMAGENET_NOTE = "the paper starts from ImageNet weights: pass --imagenet-weights <torchvision ResNet .pth>"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]

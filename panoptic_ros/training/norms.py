"""Batch-norm control for training: frozen backbone batch norm (RTPS, SPINet) and SyncBatchNorm (DDP).

Both replace modules whose type is exactly nn.BatchNorm2d and keep their state_dict keys, so a
checkpoint written from either loads into a plain network. FixedStatsBatchNorm2d layers (LPSNet's
pooling branches) are left as they are: their statistics are fixed already.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from panoptic_ros.networks.layers import FixedStatsBatchNorm2d


def replace_batch_norms(module: nn.Module, make: Callable[[nn.BatchNorm2d], nn.Module]) -> int:
    """Replace every nn.BatchNorm2d below `module` by make(it); returns how many were replaced."""
    count = 0
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, make(child))
            count += 1
        else:
            count += replace_batch_norms(child, make)
    return count


def frozen_copy(bn: nn.BatchNorm2d) -> FixedStatsBatchNorm2d:
    """A FixedStatsBatchNorm2d with `bn`'s statistics and affine, the affine taking no gradient."""
    frozen = FixedStatsBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    frozen.load_state_dict(bn.state_dict())
    frozen.to(bn.running_mean.device)
    for p in frozen.parameters():
        p.requires_grad_(False)
    return frozen


def freeze_batch_norm(module: nn.Module) -> int:
    """Freeze every batch norm of `module` (statistics and affine), as RTPS and SPINet do for the backbone."""
    return replace_batch_norms(module, frozen_copy)


def sync_batch_norm(module: nn.Module) -> int:
    """Turn every (unfrozen) batch norm of `module` into nn.SyncBatchNorm, for DDP on CUDA."""
    return replace_batch_norms(module, nn.SyncBatchNorm.convert_sync_batchnorm)

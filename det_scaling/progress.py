"""Training progress measured in images seen: the one place iterations and images convert.

A schedule point written in iterations (MAX_ITER, STEPS, WARMUP_ITERS, periods) means "after this
many images" once multiplied by the total batch it was written for. Moving to another total batch
keeps the images and changes the iterations; resuming at another GPU count converts the iteration
the same way.
"""

from __future__ import annotations

__all__ = ["epochs_seen", "images_seen", "iterations_for_images", "rescale_iterations"]


def images_seen(iteration: int, ims_per_batch: int) -> int:
    """Images consumed after ``iteration`` optimizer steps of ``ims_per_batch`` images."""
    return iteration * ims_per_batch


def epochs_seen(iteration: int, ims_per_batch: int, dataset_size: int) -> float:
    """Epochs consumed after ``iteration`` steps; ``dataset_size`` must be positive."""
    if dataset_size <= 0:
        raise ValueError(f"dataset_size must be positive, got {dataset_size}")
    return images_seen(iteration, ims_per_batch) / dataset_size


def rescale_iterations(iterations: int, old_batch: int, new_batch: int) -> int:
    """The iteration count that sees the same images at ``new_batch`` as ``iterations`` did at
    ``old_batch``, rounded to the nearest integer (ties to even, as Python's ``round``).

    Written as ``iterations / (new_batch / old_batch)`` on purpose: detectron2's
    ``DefaultTrainer.auto_scale_workers`` computes exactly this float expression, so both give the
    same integers, ties included.
    """
    return round(iterations / (new_batch / old_batch))


def iterations_for_images(images: int, ims_per_batch: int) -> int:
    """The optimizer steps of ``ims_per_batch`` images that come nearest to ``images`` images
    (ties to even, as :func:`rescale_iterations`): where a run resumed at another total batch
    continues."""
    if ims_per_batch <= 0:
        raise ValueError(f"ims_per_batch must be positive, got {ims_per_batch}")
    return round(images / ims_per_batch)

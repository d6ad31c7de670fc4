"""The label check shared by the readers of image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def check_labels(
    images_path: Path,
    num_images: int,
    labels_path: Path,
    labels: np.ndarray,
    num_classes: int,
) -> None:
    """Check that ``labels`` holds one class index in ``[0, num_classes)`` per image.

    Args:
        images_path: The images' file, for the message.
        num_images: The number of images.
        labels_path: The labels' file, for the message.
        labels: ``(N,)`` integer labels.
        num_classes: The number of classes.

    Raises:
        ValueError: If the counts differ or a label is out of range, naming the files.
    """
    if len(labels) != num_images:
        raise ValueError(
            f"{images_path} holds {num_images} images but {labels_path} holds "
            f"{len(labels)} labels."
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{labels_path} holds labels in [{int(labels.min())}, "
            f"{int(labels.max())}]; expected 0 to {num_classes - 1}."
        )

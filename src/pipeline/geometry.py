"""ResNet18's feature-map sizes, from the image size alone."""

from __future__ import annotations

RESNET_DOWNSAMPLING_STAGES = 5  # conv1, maxpool, layer2, layer3, layer4: each halves (ceil)


def resnet_final_size(image_size: int) -> int:
    """Height (= width) of ResNet18's last feature map: five stride-2 stages, each ceil(x/2)."""
    size = image_size
    for _ in range(RESNET_DOWNSAMPLING_STAGES):
        size = (size + 1) // 2
    return size


def min_image_size(batch_size: int) -> int:
    """Smallest image for which layer4's BatchNorm sees > 1 value per channel in training."""
    size = 1
    while batch_size * resnet_final_size(size) ** 2 < 2:
        size += 1
    return size

"""pipeline: ResNet18 experiments on Lightning + Hydra + TensorBoard, with live gradient checks."""

__version__ = "0.1.0"

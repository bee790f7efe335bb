"""A plain PyTorch training loop in a process of its own: what `bench.outside_rounds` times a
real `python -m pipeline.train` against. The notebook's loop (zero_grad, forward, loss,
backward, step) on one fixed batch made before the loop: ResNet18, mean squared error, SGD.

    python -m pipeline.bench.plain_script --steps 44 --image-size 64 --batch-size 32
"""

from __future__ import annotations

import argparse

import torch
from torchvision.models import resnet18


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.plain_script")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    model = resnet18(num_classes=args.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.rand(args.batch_size, args.num_classes)
    loss = torch.zeros(())
    for _ in range(args.steps):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(images), labels)
        loss.backward()
        optimizer.step()
    print(f"loss {float(loss):.6f} after {args.steps} steps")


if __name__ == "__main__":
    main()

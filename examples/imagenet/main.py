"""The PyTorch ImageNet training example, fed by seqstore.

    # one process
    python examples/imagenet/main.py DATA --backend lmdb --epochs 90
    # data-parallel over 8 GPUs (or CPU processes with gloo)
    torchrun --nproc_per_node=8 examples/imagenet/main.py DATA --backend hdf5

DATA is a dataset root with ``train`` and ``val`` splits: folders, or stores made by
``seqstore convert`` (``train.lmdb``, ``val.h5``, ``train/`` ...), or tensorpack's
``ILSVRC-train.lmdb``. Checkpoints hold the loader state, so ``--resume`` continues an
interrupted epoch with exactly the samples it had not seen. ``--max-steps`` stops early,
which with the small default model lets the example run on a CPU in seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from seqstore import Loader


def small_cnn(num_classes: int) -> nn.Module:
    """A few conv layers: enough to check the pipeline end to end without torchvision."""

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    return nn.Sequential(
        block(3, 32),
        block(32, 64),
        block(64, 128),
        block(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )


def build_model(arch: str, num_classes: int) -> nn.Module:
    if arch == "small":
        return small_cnn(num_classes)
    try:
        import torchvision
    except ImportError:
        raise SystemExit(f"--arch {arch} needs torchvision; use --arch small without it") from None
    return torchvision.models.__dict__[arch](num_classes=num_classes)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument(
        "--backend", default=None, help="train store's backend (default: from its manifest)"
    )
    p.add_argument("--arch", default="small", help="'small', or a torchvision model name")
    p.add_argument("--epochs", type=int, default=90)
    p.add_argument("--batch-size", type=int, default=256, help="per process")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--workers", type=int, default=4, help="loader worker processes per rank")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoint.pt"))
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--print-freq", type=int, default=10)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(args.seed)

    common: dict[str, Any] = dict(
        batch_size=args.batch_size,
        num_workers=args.workers,
        image_size=args.image_size,
        resize_size=args.image_size * 8 // 7,
        device=str(device),
        seed=args.seed,
        channels_last=device.type == "cuda",
    )
    # --backend is the training store's; val may be another format (val.h5, a folder).
    train_loader = Loader(
        args.data, split="train", backend=args.backend, transform="imagenet_train", **common
    )
    val_loader = Loader(args.data, split="val", transform="imagenet_val", shuffle=False, **common)
    num_classes = len(train_loader.classes)

    model: nn.Module = build_model(args.arch, num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == "cuda" else None
        )
    optimizer = torch.optim.SGD(
        model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)

    step = 0
    if args.resume and args.checkpoint.exists():
        ckpt = torch.load(args.checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        train_loader.load_state_dict(ckpt["loader"][rank])
        step = ckpt["step"]
        if rank == 0:
            print(f"resumed at epoch {train_loader.epoch}, step {step}")

    def save() -> None:
        states = [train_loader.state_dict()]
        if distributed:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states[0])
            states = gathered
        if rank == 0:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "loader": states,
                    "step": step,
                },
                args.checkpoint,
            )

    stop = False
    for epoch in range(train_loader.epoch, args.epochs):
        model.train()
        train_loader.set_epoch(epoch)  # keeps a resumed position within this epoch
        start = time.perf_counter()
        for images, labels in train_loader:
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if rank == 0 and step % args.print_freq == 0:
                rate = args.batch_size * args.print_freq / (time.perf_counter() - start)
                print(
                    f"epoch {epoch} step {step} loss {loss.item():.3f} ({rate:.0f} img/s per rank)"
                )
                start = time.perf_counter()
            stop = args.max_steps is not None and step >= args.max_steps
            if stop:
                break
        if train_loader.epoch > epoch:  # the epoch ran to its end
            scheduler.step()
            top1 = validate(model, val_loader, distributed)
            if rank == 0:
                print(f"epoch {epoch} val top-1 {top1:.2%}")
        save()
        if stop:
            if rank == 0:
                print(f"stopped after {step} steps; checkpoint: {args.checkpoint}")
            break
    if distributed:
        dist.destroy_process_group()


@torch.no_grad()
def validate(model: nn.Module, loader: Loader, distributed: bool) -> float:
    model.eval()
    correct = torch.zeros(2, device=loader.device)
    for images, labels in loader:
        correct[0] += (model(images).argmax(1) == labels).sum()
        correct[1] += labels.numel()
    if distributed:
        dist.all_reduce(correct)
    return float(correct[0] / correct[1].clamp(min=1))


if __name__ == "__main__":
    main()

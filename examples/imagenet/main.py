"""The PyTorch ImageNet training example, fed by seqstore.

    # one process
    python examples/imagenet/main.py DATA --backend lmdb --epochs 90
    # data-parallel over 8 GPUs (or CPU processes with gloo)
    torchrun --nproc_per_node=8 examples/imagenet/main.py DATA --backend hdf5
    # continue the last run, with its own arguments, on any number of ranks
    python examples/imagenet/main.py DATA --resume

DATA is a dataset root with ``train`` and ``val`` splits: folders, or stores made by
``seqstore convert`` (``train.lmdb``, ``val.h5``, ``train/`` ...), or tensorpack's
``ILSVRC-train.lmdb``. Checkpoints (``DATA/checkpoints/checkpoint.pt`` unless
``--checkpoint-dir`` says otherwise) hold the run's arguments and the loader state of rank 0
(every rank runs the same number of batches, so one rank's state tells what all delivered).
``--resume`` alone continues an interrupted epoch: on the same number of ranks exactly as it
would have run, on another with the records it had not delivered, each once. ``--max-steps``
stops early, which with the small default model lets the example run on a CPU in seconds.
``--extra PATH:WEIGHT`` mixes another source into each training epoch by weight (the train
split weighs 1; see docs/mixing.md).
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
from seqstore.splits import resolve_split


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


# What may differ between a run and the run it resumes; every other argument comes from the
# checkpoint, and one given alongside --resume that differs from it is refused.
RESUMABLE = {"data", "resume", "checkpoint_dir", "max_steps", "print_freq"}


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
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
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="where checkpoint.pt is written and --resume reads it (default: DATA/checkpoints)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint, with the arguments of the run that wrote it",
    )
    p.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="PATH:WEIGHT",
        help="another training source mixed in (any format seqstore reads), with its weight "
        "beside the train split's 1; repeatable",
    )
    p.add_argument("--print-freq", type=int, default=10)
    if suppress_defaults:
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """The arguments, and the checkpoint ``--resume`` continues from (None: start afresh).

    With ``--resume`` the saved run's arguments are used, updated by the ones in
    :data:`RESUMABLE` given on this command line.
    """
    args = build_parser().parse_args(argv)
    if args.checkpoint_dir is None:
        args.checkpoint_dir = args.data / "checkpoints"
    path = args.checkpoint_dir / "checkpoint.pt"
    if not (args.resume and path.exists()):
        return args, None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    given = vars(build_parser(suppress_defaults=True).parse_args(argv))
    saved = ckpt["args"]
    for name, value in given.items():
        if name not in RESUMABLE and value != saved[name]:
            flag = "--" + name.replace("_", "-")
            raise SystemExit(
                f"main.py: error: {flag} {value} differs from the resumed run's {saved[name]} "
                f"({path}); leave it out to resume with the run's own arguments"
            )
    merged = {**saved, **{k: v for k, v in vars(args).items() if k in RESUMABLE}}
    return argparse.Namespace(**merged), ckpt


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel, whose state_dict has no ``module.`` prefix."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def bare_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` without DDP's ``module.`` prefix (checkpoints written by wrapped models)."""
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def main() -> None:
    args, ckpt = parse_args()
    checkpoint = args.checkpoint_dir / "checkpoint.pt"
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
    if args.extra:  # the train split and the extra sources, mixed by weight each epoch
        train, found = resolve_split(args.data, "train", {})
        sources = [{"path": str(train), "backend": args.backend, "reader_options": found}]
        for entry in args.extra:
            path, _, weight = entry.rpartition(":")
            if not path or not weight.replace(".", "", 1).isdigit():
                path, weight = entry, "1"
            sources.append({"path": path, "weight": float(weight)})
        train_loader = Loader(sources, transform="imagenet_train", **common)
    else:
        train_loader = Loader(
            args.data, split="train", backend=args.backend, transform="imagenet_train", **common
        )
    # Every val image once over the ranks (no padding), for an exact top-1.
    val_loader = Loader(
        args.data, split="val", transform="imagenet_val", shuffle=False, pad_ranks=False, **common
    )
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
    if ckpt is not None:
        unwrap(model).load_state_dict(bare_state(ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["loader"]
        train_loader.load_state_dict(state)
        if rank == 0 and state["world_size"] != train_loader.world_size:
            print(
                f"checkpoint of {state['world_size']} rank(s) resumed on "
                f"{train_loader.world_size}: epoch {train_loader.epoch} goes on with "
                f"{len(train_loader)} batches per rank"
            )
        step = ckpt["step"]
        if rank == 0:
            print(f"resumed at epoch {train_loader.epoch}, step {step}")

    def save() -> None:
        if rank == 0:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {
                    "args": vars(args),
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "loader": train_loader.state_dict(),
                    "step": step,
                },
                checkpoint,
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
                print(f"stopped after {step} steps; checkpoint: {checkpoint}")
            break
    if distributed:
        dist.destroy_process_group()


@torch.no_grad()
def validate(model: nn.Module, loader: Loader, distributed: bool) -> float:
    model.eval()
    # The module itself, not DDP's wrapper: ranks may run a batch more or fewer here.
    model = getattr(model, "module", model)
    correct = torch.zeros(2, device=loader.device)
    for images, labels in loader:
        correct[0] += (model(images).argmax(1) == labels).sum()
        correct[1] += labels.numel()
    if distributed:
        dist.all_reduce(correct)
    return float(correct[0] / correct[1].clamp(min=1))


if __name__ == "__main__":
    main()

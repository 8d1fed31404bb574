"""`skyfuse train`: train one fusion network on aligned pairs with synthetic misalignment.

The data folder is split with training.data.split (RoadScene: 121 train / 100 test, fixed seed); the
trainer validates on the first `--val-pairs` test pairs, each with its fixed deformation, before the
first step and every `--val-every` epochs. `--range` picks the misalignment range(s) of training.synth's
MISALIGN_RANGES (default: `default`, the one the shipped weights were trained on); with several, each crop
is deformed from one of them at random and validation scores each range's fixed test deformations
(columns `val_RANGE_*`). Output folder: checkpoint.pt (resumable), <model>.pt (the
network's weights, for build_network), log.csv, curves.png and command.txt (the exact command).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from core.errors import SkyfuseError
from engines.networks import NETWORKS, make_config, network_classes, save_weights, spec

from .data import find_pairs, load_pair, split
from .dataset import FixedMisaligned, MisalignedCrops
from .plot import plot_history
from .recipes import recipe_class
from .synth import MISALIGN_RANGES, MisalignConfig, misalign_range
from .validate import baseline, validate


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="skyfuse train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", required=True, choices=list(NETWORKS))
    p.add_argument("--data", required=True, help="folder of aligned pairs (RoadScene layout, pairs.csv, ...)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="square training crop (a multiple of the network's)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--out", default="out/train", help="output folder")
    p.add_argument("--resume", help="checkpoint.pt to continue from (with --lr as the new learning rate)")
    p.add_argument("--init", help="weights file (.pt) to start from after a change of architecture: "
                   "tensors that kept their name are copied (see initialise_from)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--config", nargs="*", default=[], metavar="KEY=VALUE", help="network config overrides, e.g. width=16"
    )
    p.add_argument("--repeats", type=int, default=1, help="crops per pair per epoch")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--time-limit", type=float, help="stop after this many minutes (after the current step)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--val-pairs", type=int, default=20, help="test pairs used for validation")
    p.add_argument("--range", nargs="+", default=["default"], metavar="RANGE", dest="ranges",
                   help=f"misalignment range(s) among {', '.join(MISALIGN_RANGES)}; several: mixed")
    p.add_argument("--train-only", nargs="+", metavar="PREFIX",
                   help="train only the parameters whose names start with a PREFIX (e.g. `fine`: "
                        "skyfuse-rt's residual decoder), the rest held as loaded")
    p.add_argument("--parallax", type=float, help="max depth-dependent parallax shift, px (default: the "
                   "range's own)")
    return p.parse_args(argv)


def parse_overrides(items: list[str]) -> dict:
    """KEY=VALUE strings -> dict, values read as int, float, bool or string."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SkyfuseError(f"--config expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def initialise_from(network: torch.nn.Module, path: str) -> str:
    """Copy the tensors of the weights file `path` into `network` by name; a tensor that grew (e.g. a
    convolution given new input channels) gets the old values in its leading part and zeros in the rest,
    so the new inputs start out ignored and the network starts where the old one was. Returns a summary."""
    try:
        old = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    except Exception as exc:  # a missing, truncated or foreign file: say which
        raise SkyfuseError(f"--init: cannot read weights {path}: {exc}") from None
    state = network.state_dict()
    copied, grown = [], []
    for name, tensor in state.items():
        source = old.get(name)
        if source is None or source.dim() != tensor.dim():
            continue
        if source.shape == tensor.shape:
            tensor.copy_(source)
            copied.append(name)
        elif all(a <= b for a, b in zip(source.shape, tensor.shape)):
            tensor.zero_()
            tensor[tuple(slice(0, n) for n in source.shape)] = source
            grown.append(name)
    network.load_state_dict(state)
    fresh = [name for name in state if name not in copied and name not in grown]
    return (f"--init {path}: {len(copied)} tensors copied, {len(grown)} grown ({', '.join(grown) or '-'}), "
            f"{len(fresh)} new ({', '.join(fresh) or '-'})")


def freeze_all_but(network: torch.nn.Module, prefixes: list[str]) -> str:
    """Hold every parameter whose name starts with none of `prefixes`; what is trained, in one line."""
    trained = 0
    for name, parameter in network.named_parameters():
        parameter.requires_grad_(name.startswith(tuple(prefixes)))
        trained += parameter.numel() if parameter.requires_grad else 0
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n, _ in network.named_parameters())]
    if unmatched:
        modules = sorted({name.split(".")[0] for name, _ in network.named_parameters()})
        raise SkyfuseError(f"--train-only {' '.join(unmatched)}: no parameter starts with it; the network's "
                           f"modules: {', '.join(modules)}")
    total = sum(p.numel() for p in network.parameters())
    return f"--train-only {' '.join(prefixes)}: training {trained:,} of {total:,} parameters"


def check_args(args: argparse.Namespace) -> None:
    multiple = spec(args.model).size_multiple
    if args.crop <= 0 or args.crop % multiple:
        raise SkyfuseError(
            f"--crop must be a positive multiple of {multiple} for {args.model}, got {args.crop}"
        )
    for name in ("epochs", "batch", "repeats", "val_every"):
        if getattr(args, name) <= 0:
            raise SkyfuseError(f"--{name.replace('_', '-')} must be positive")
    if args.lr <= 0:
        raise SkyfuseError("--lr must be positive")
    if args.init and args.resume:
        raise SkyfuseError("--init starts a new run from weights and --resume continues one: give only one")
    for name in args.ranges:
        misalign_range(name)  # a one-line error for an unknown name
    if len(set(args.ranges)) != len(args.ranges):
        raise SkyfuseError(f"--range names a range twice: {' '.join(args.ranges)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SkyfuseError("--device cuda: no CUDA device available to torch")


def range_configs(args: argparse.Namespace) -> dict[str, MisalignConfig]:
    """range name -> its config, with `--parallax` (when given) in place of the range's own."""
    configs = {name: misalign_range(name) for name in args.ranges}
    if args.parallax is not None:
        configs = {name: replace(c, parallax_px=args.parallax) for name, c in configs.items()}
    return configs


def validate_ranges(network, val_sets: dict[str, list], multiple: int, device) -> dict[str, float]:
    """Validation scores, `val_*`; with several ranges `val_RANGE_*` for each."""
    prefix = (lambda name: "val_") if len(val_sets) == 1 else (lambda name: f"val_{name}_")
    return {f"{prefix(name)}{k}": v for name, samples in val_sets.items()
            for k, v in validate(network, samples, multiple, device).items()}


def write_log(history: list[dict], out: Path) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(out / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    series = [k for k in keys if k not in ("epoch", "step", "elapsed_s")]
    plot_history(history, "step", series, out / "curves.png")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check_args(args)
    overrides = parse_overrides(args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "command.txt", "a") as f:  # a resumed run adds its command below the first
        f.write("skyfuse train " + shlex.join(argv) + "\n")

    train_paths, test_paths = split(find_pairs(args.data))
    print(f"data: {len(train_paths)} training pairs, {len(test_paths)} test pairs ({args.data})")
    configs = range_configs(args)
    print(f"misalignment: {', '.join(configs)}")
    train_set = MisalignedCrops(
        [load_pair(p) for p in train_paths], args.crop, list(configs.values()), args.seed, args.repeats
    )
    val_pairs = [load_pair(p) for p in test_paths[: args.val_pairs]]
    val_sets = {  # each range's own fixed test deformations (the default range's: as they always were)
        name: list(FixedMisaligned(val_pairs, config, "" if name == "default" else name))
        for name, config in configs.items()
    } if val_pairs else {}

    network_cls, _ = network_classes(args.model)
    network = network_cls(make_config(args.model, overrides))
    if args.init:
        print(initialise_from(network, args.init))
    if args.train_only:
        print(freeze_all_but(network, args.train_only))
    recipe = recipe_class(args.model)(network, args.lr).to(device)
    n_params = sum(p.numel() for p in network.parameters())
    print(f"model: {args.model} {network.config} ({n_params / 1e6:.3f} M parameters)")

    history: list[dict] = []
    epoch = step = 0
    if args.resume:
        state = torch.load(args.resume, map_location=device, weights_only=False)
        recipe.load_state_dict(state["recipe"])
        epoch, step, history = state["epoch"], state["step"], state["history"]
        for optimizer in recipe.optimizers.values():  # --lr applies from the resume on (e.g. a final decay)
            for group in optimizer.param_groups:
                group["lr"] = args.lr
        print(f"resumed from {args.resume} at epoch {epoch}, step {step}")

    multiple = spec(args.model).size_multiple
    if not history and val_sets:
        lines = []
        for name, samples in val_sets.items():
            floor = baseline(samples)
            label = "" if len(val_sets) == 1 else f"{name}_"
            print(f"baseline (no registration, 50/50 blend{', ' + name if label else ''}): "
                  + " ".join(f"{k} {v:.4f}" for k, v in floor.items()))
            lines += [f"{label}{k},{v}\n" for k, v in floor.items()]
        (out / "baseline.txt").write_text("".join(lines))
        history.append(
            {"epoch": 0, "step": 0, "elapsed_s": 0.0} | validate_ranges(network, val_sets, multiple, device)
        )
    steps_per_epoch = len(train_set) // args.batch
    recipe.plan(min(args.max_steps or 10**12, args.epochs * steps_per_epoch))
    if steps_per_epoch == 0:
        raise SkyfuseError(
            f"--batch {args.batch} is larger than the {len(train_set)} training crops per epoch"
        )
    start = time.monotonic() - (history[-1]["elapsed_s"] if history else 0.0)
    stop = False
    while epoch < args.epochs and not stop:
        train_set.set_epoch(epoch)
        loader = DataLoader(
            train_set,
            batch_size=args.batch,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(args.seed * 100003 + epoch),
        )
        progress = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{args.epochs}", unit="step")
        recipe.train()
        sums: dict[str, float] = {}
        for i, batch in enumerate(loader):
            losses = recipe.train_step({k: v.to(device) for k, v in batch.items()})
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            progress.update()
            progress.set_postfix({k: f"{v / (i + 1):.4f}" for k, v in sums.items()}, refresh=False)
            elapsed = time.monotonic() - start
            if (args.max_steps and step >= args.max_steps) or (
                args.time_limit and elapsed > 60 * args.time_limit
            ):
                stop = True
                break
        progress.close()
        epoch += 1
        row = {"epoch": epoch, "step": step, "elapsed_s": round(time.monotonic() - start, 1)}
        row |= {f"train_{k}": v / max(1, i + 1) for k, v in sums.items()}
        if val_sets and (epoch % args.val_every == 0 or stop or epoch == args.epochs):
            scores = validate_ranges(network, val_sets, multiple, device)
            row |= scores
            print(f"validation after epoch {epoch}: "
                  + " ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in scores.items()))
        history.append(row)
        write_log(history, out)
        torch.save(
            {
                "recipe": recipe.state_dict(),
                "epoch": epoch,
                "step": step,
                "history": history,
                "model": args.model,
                "config": overrides,
            },
            out / "checkpoint.pt",
        )
        save_weights(network, out / f"{args.model}.pt")
    print(
        f"done: {step} steps in {time.monotonic() - start:.0f} s; weights {out / (args.model + '.pt')}, "
        f"log {out / 'log.csv'}, curves {out / 'curves.png'}"
    )
    return 0

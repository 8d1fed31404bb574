"""The `skyfuse` command. Each subcommand lives in the package that owns it and parses its own
arguments; this module only dispatches and turns user errors into one-line messages."""

from __future__ import annotations

import importlib
import sys

from core.errors import SkyfuseError

# subcommand -> ("module:function", one-line help). Each function takes argv (list[str]) and returns an
# exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("pipeline.launcher:main", "run the whole pipeline (capture, fuse, sink) as supervised processes"),
    "capture": ("pipeline.capture:main", "run one capture stage: a source sent to a fuse stage"),
    "fuse": ("pipeline.cli:fuse_command", "run the fuse stage (--visible-in/--thermal-in), or fuse one "
                                          "image pair as it would (--visible/--thermal: fuse-pair)"),
    "sink": ("pipeline.sink:main", "run the sink stage: HUD, recording, live view"),
    "keys": ("pipeline.keys:main", "make the link keys that encrypt and authenticate tcp links"),
    "calibrate": ("calibration.cli:main", "estimate the rig file (geometry and time offset)"),
    "metrics": ("training.metrics:main", "fusion metrics for one visible/thermal/fused triple"),
    "train": ("training.trainer:main", "train a fusion network"),
    "eval": ("training.evaluate:main", "evaluate networks on a benchmark protocol"),
    "fuse-pair": ("pipeline.fuse_pair:main", "fuse one image pair as the fuse stage does"),
    "export": ("training.export:main", "export a network to ONNX"),
    "build-engine": ("engines.tensorrt_build:main", "build a TensorRT engine from ONNX"),
}


STAGES = ("capture", "sink")  # stage processes (and `fuse` with endpoints): they share the machine's cores


def fuse_command(argv: list[str]) -> int:
    """`skyfuse fuse` names two things users expect: the pipeline's fuse stage, which listens on
    endpoints, and fusing one pair of image files (`skyfuse fuse-pair`, the same fusion; its --help says
    both); the flags tell them apart."""
    flags = {arg.split("=", 1)[0] for arg in argv}
    if flags & {"--visible", "--thermal"} and not flags & {"--visible-in", "--thermal-in"}:
        from .fuse_pair import main as fuse_pair
        return fuse_pair(argv)
    from .fuse import main as fuse_stage
    from .stage import share_cores

    share_cores()
    return fuse_stage(argv)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: skyfuse COMMAND [options]   (skyfuse COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"skyfuse: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name = COMMANDS[name][0].split(":")
    if name in STAGES:
        from .stage import share_cores

        share_cores()
    try:
        function = getattr(importlib.import_module(module_name), function_name)
        return int(function(rest) or 0)
    except SkyfuseError as exc:
        print(f"skyfuse {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (ModuleNotFoundError, AttributeError) as exc:
        if module_name.split(".")[0] in str(exc):
            print(f"skyfuse {name}: error: this command is not available in this install ({exc})",
                  file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

"""The ``fcnseg`` command line."""

from __future__ import annotations

import argparse
import sys
import time
import traceback


def _cmd_models(args: argparse.Namespace) -> int:
    """Lists every (arch, backbone) with its parameter count and, with --time, a forward pass time."""
    import torch

    from .models import ARCHS, BACKBONES, build_model, count_parameters

    torch.set_num_threads(args.threads)
    backbones = args.backbone or list(BACKBONES)
    size = tuple(args.size)
    header = f"{'backbone':20s} {'arch':13s} {'padding':7s} {'params':>12s}"
    print(header + (f" {'forward ms @' + 'x'.join(map(str, size)):>20s}" if args.time else ""))
    for backbone in backbones:
        for arch in ARCHS:
            model = build_model(arch, backbone, args.num_classes).eval()
            line = f"{backbone:20s} {arch:13s} {model.trunk.padding:7s} {count_parameters(model):12,d}"
            if args.time:
                x = torch.rand(1, 3, *size)
                with torch.inference_mode():
                    model(x)
                    times = []
                    for _ in range(args.repeat):
                        t = time.perf_counter()
                        model(x)
                        times.append(time.perf_counter() - t)
                line += f" {1000 * sorted(times)[len(times) // 2]:20.1f}"
            print(line, flush=True)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, threads=args.threads)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list architectures and backbones with parameter counts")
    m.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    m.add_argument("--num-classes", type=int, default=21)
    m.add_argument("--time", action="store_true", help="also time one forward pass (median)")
    m.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    m.add_argument("--repeat", type=int, default=3)
    m.add_argument("--threads", type=int, default=2)
    m.set_defaults(func=_cmd_models)

    d = sub.add_parser("demo", help="a classifier made fully convolutional, run on real photos")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--threads", type=int, default=2)
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        print(f"fcnseg: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``python -m numbaconv info|bench`` (also installed as ``numbaconv``)."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="numbaconv",
        description="numbaconv: CNN kernels JIT-compiled with Numba. The device comes from "
                    "NUMBACONV_DEVICE (cpu | cuda | auto) or --device.")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="run on this device")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, devices, threads, SIMD width and cache folder")
    bench = sub.add_parser(
        "bench", help="time conv2d (ResNet-50, MobileNetV2, VGG-16 layers) and memory-bound "
                      "ops next to PyTorch when installed; results are checked first")
    bench.add_argument("--quick", action="store_true",
                       help="ResNet-50 3x3 and 1x1 layers at batch 1 only (about a minute)")
    bench.add_argument("--sets", nargs="+", choices=("resnet50", "mobilenetv2", "vgg16"),
                       help="layer sets for the full run (default: all)")
    bench.add_argument("--batch", type=int, nargs="+", help="batch sizes (default: 1 32)")
    bench.add_argument("--out", help="folder for the JSON and Markdown results "
                                     "(default: bench/results when it exists here)")
    bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    args = parser.parse_args(argv)

    import os

    import numbaconv as nc

    if args.device:
        nc.set_device(args.device)
    if args.command == "info":
        nc.info()
    elif args.command == "bench":
        from numbaconv import bench as _bench

        out = args.out or ("bench/results" if os.path.isdir("bench/results") else None)
        _bench.main(quick=args.quick, sets=args.sets, batches=args.batch, out_dir=out,
                    with_torch=not args.no_torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())

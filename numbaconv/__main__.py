"""Command line: ``python -m numbaconv info|bench|demo`` (also installed as ``numbaconv``)."""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="numbaconv",
        description="numbaconv: CNN kernels JIT-compiled with Numba. The device comes from "
                    "NUMBACONV_DEVICE (cpu | cuda | auto) or --device.")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="run on this device (before the command: --device cpu demo)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, devices, threads, SIMD width and cache folder")
    bench = sub.add_parser(
        "bench", help="time conv2d layers, memory-bound ops, ResNet-18 / MobileNetV2 inference "
                      "and start-up next to PyTorch when installed; results are checked first",
        description="Sections: conv (ResNet-50, MobileNetV2, VGG-16 layers; GFLOP/s next to "
                    "PyTorch and the sgemm ceiling), scaling (dense conv at 1 thread vs all), "
                    "elementwise (pooling, activations, batch_norm; GB/s vs a measured copy), "
                    "overhead (host time of one small call, batch 1, 8x8 image), "
                    "e2e (ResNet-18, MobileNetV2 inference through numbaconv.models, fused and "
                    "unfused, vs PyTorch eager), memory (peak memory of ResNet-18's eval forward "
                    "in fresh processes, vs PyTorch eager and a lower bound), startup (first "
                    "call with a warm cache, ResNet-18 compile with an empty one). Results go to "
                    "<out>/cpu.json, .md and .png (gpu.* on CUDA; *-quick.* with --quick), merged "
                    "row by row with an earlier run on the same machine unless --fresh.")
    bench.add_argument("--quick", action="store_true",
                       help="a few layers of each kind at batch 1, small elementwise tensors, "
                            "networks at batch 1, no empty-cache compile (under two minutes)")
    bench.add_argument("--only", nargs="+", choices=("conv", "scaling", "elementwise", "overhead",
                                                     "e2e", "memory", "startup"),
                       help="run only these sections (default: all)")
    bench.add_argument("--sets", nargs="+", choices=("resnet50", "mobilenetv2", "vgg16"),
                       help="conv layer sets (default: all)")
    bench.add_argument("--batches", "--batch", dest="batches", type=int, nargs="+",
                       help="batch sizes for conv, e2e and memory (default: 1 32; --quick: 1); "
                            "scaling uses the smallest")
    bench.add_argument("--nets", nargs="+", choices=("resnet18", "mobilenetv2"),
                       help="networks for e2e (default: both) and memory (default: resnet18)")
    bench.add_argument("--elementwise-shape", type=int, nargs=4, metavar=("N", "C", "H", "W"),
                       help="tensor shape of the memory-bound ops (default 32 64 56 56; "
                            "--quick: 4 64 56 56)")
    bench.add_argument("--budget", type=float,
                       help="seconds of timing per function and measurement (default 0.5; "
                            "--quick: 0.2)")
    bench.add_argument("--untracked-weights", action="store_true",
                       help="conv layers: weights not vouched for, so packed on every call "
                            "(as PyTorch eager does) instead of cached as a layer's are")
    bench.add_argument("--out", help="folder for the results "
                                     "(default: bench/results when it exists here)")
    bench.add_argument("--fresh", action="store_true",
                       help="overwrite the results file instead of merging into it")
    bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    demo = sub.add_parser(
        "demo", help="train LeNet-5 on the bundled handwritten digits and report held-out "
                     "accuracy and images/s (--zoo: time the model zoo's inference instead)",
        description="Trains LeNet-5 on the bundled UCI handwritten digits (1,438 training "
                    "images, 359 held out; 8x8, upscaled to 32x32) with SGD through numbaconv's "
                    "backward kernels on the current device, printing the loss, held-out "
                    "accuracy and images/s per epoch, and saves <out>/history.json and a "
                    "loss/accuracy plot <out>/training.svg. The first epoch compiles the "
                    "kernels, or loads them from the on-disk cache. With --zoo it instead "
                    "times fused inference of lenet5, resnet18, mobilenet_v2 and squeezenet1_1 "
                    "(untrained) over the held-out digits.")
    demo.add_argument("--device", dest="demo_device", choices=("cpu", "cuda"),
                      help="train on this device (default: NUMBACONV_DEVICE, else auto)")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    demo.add_argument("--batch", type=int, help="images per step (default 32; --zoo: 64)")
    demo.add_argument("--lr", type=float, default=0.05,
                      help="SGD's starting learning rate, cosine-decayed (default 0.05)")
    demo.add_argument("--seed", type=int, default=0, help="initialisation and shuffling seed")
    demo.add_argument("--out", default="numbaconv-demo",
                      help="folder for history.json and training.svg (default ./numbaconv-demo)")
    demo.add_argument("--zoo", action="store_true",
                      help="time the model zoo's fused inference instead of training")
    demo.add_argument("--models", nargs="+", choices=("lenet5", "resnet18", "mobilenet_v2",
                                                      "squeezenet1_1"),
                      help="--zoo: models to run (default: all)")
    demo.add_argument("--rounds", type=int, default=2,
                      help="--zoo: timed passes over the data per model; the best is shown "
                           "(default 2)")
    args = parser.parse_args(argv)

    import os

    import numbaconv as nc

    device = getattr(args, "demo_device", None) or args.device
    if device:
        nc.set_device(device)
    if args.command == "info":
        nc.info()
    elif args.command == "bench":
        from numbaconv import bench as _bench

        out = args.out or ("bench/results" if os.path.isdir("bench/results") else None)
        _bench.main(quick=args.quick, sets=args.sets, batches=args.batches, only=args.only,
                    nets=args.nets, elementwise_shape=args.elementwise_shape, out_dir=out,
                    with_torch=not args.no_torch, merge=not args.fresh,
                    tracked=not args.untracked_weights, budget=args.budget,
                    argv_text=" ".join(argv if argv is not None else sys.argv[1:]))
    elif args.command == "demo":
        from numbaconv import demo as _demo

        if args.zoo:
            _demo.main_zoo(args.models, args.batch or 64, args.rounds)
        else:
            if args.models:
                parser.error("demo: --models needs --zoo")
            _demo.main(args.epochs, args.batch or 32, args.lr, args.seed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

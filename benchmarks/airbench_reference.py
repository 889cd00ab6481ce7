"""airbench94's own PyTorch code, run on this project's prepared split on the CPU: the
reference the Keras port (`train.architecture: fast`) is measured against.

    python benchmarks/airbench_reference.py --airbench PATH/legacy/airbench94.py \
        --widths 32/64/128 --epochs 4 --seeds 0,1,2

PATH is a checkout of KellerJordan/cifar10-airbench (MIT); its file is read, not copied into
this repository. The script changes only what cannot run here, each change checked to apply:
float32 on the CPU instead of float16 on CUDA, the images and labels from data/prepared
(train.npz, scored on test.npz) instead of torchvision's download, wall-clock timing instead
of CUDA events, and widths, epochs and seeds from the command line. Everything that decides
accuracy (network, init, whitening, optimizer, schedule, lookahead, augmentation, TTA) is
airbench's code as written. Prints one JSON line per seed and the mean and sample standard
deviation of the test accuracy (6-view TTA, as airbench reports it).

Needs PyTorch, which the project does not install: use a separate environment, e.g.
`python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy` (CPU is enough).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (what airbench94.py says, what runs here); every pair must match exactly once.
SUBSTITUTIONS = (
    ("import torchvision\nimport torchvision.transforms as T\n", "import numpy as np\n"),
    ("torch.backends.cudnn.benchmark = True", ""),
    ("net = net.half().cuda()", ""),
    (
        "test_loader = CifarLoader('cifar10', train=False, batch_size=2000)",
        "test_loader = CifarLoader(DATA, train=False, batch_size=2000, split='test')",
    ),
    (
        "train_loader = CifarLoader('cifar10', train=True, batch_size=batch_size, aug=hyp['aug'])",
        "train_loader = CifarLoader(DATA, train=True, batch_size=batch_size, aug=hyp['aug'], "
        "split='train')",
    ),
    (
        "    starter = torch.cuda.Event(enable_timing=True)\n"
        "    ender = torch.cuda.Event(enable_timing=True)",
        "    starter, ender = WallClock(), WallClock()",
    ),
)

# airbench's CifarLoader.__init__ (torchvision download, float16 on the GPU), replaced whole.
LOADER_INIT = """class CifarLoader:

    def __init__(self, path, train=True, batch_size=500, aug=None, drop_last=None,
                 shuffle=None, gpu=0, split='train'):
        data = np.load(os.path.join(path, split + '.npz'))
        self.images, self.labels = torch.tensor(data['x']), torch.tensor(data['y']).long()
        self.images = (self.images.float() / 255).permute(0, 3, 1, 2)
        self.images = self.images.to(memory_format=torch.channels_last)
        self.normalize = lambda x: (x - CIFAR_MEAN.view(1, 3, 1, 1)) / CIFAR_STD.view(1, 3, 1, 1)
        self.proc_images = {}
        self.epoch = 0
        self.aug = aug or {}
        self.batch_size = batch_size
        self.drop_last = train if drop_last is None else drop_last
        self.shuffle = train if shuffle is None else shuffle

"""

PRELUDE = '''
import time as _time


class WallClock:
    """Stands in for torch.cuda.Event on the CPU."""

    def record(self):
        self.t = _time.perf_counter()

    def elapsed_time(self, other):
        return 1e3 * (other.t - self.t)

'''

MAIN = """if __name__ == "__main__":
    import json
    print_columns(logging_columns_list, is_head=True)
    accs = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        accs.append(main(seed))
        print(json.dumps({"seed": seed, "widths": hyp['net']['widths'],
                          "epochs": hyp['opt']['train_epochs'], "test_accuracy": accs[-1]}),
              flush=True)
    accs = torch.tensor(accs)
    spread = accs.std().item() if len(accs) > 1 else 0.0
    print('Mean: %.4f    Std: %.4f' % (accs.mean(), spread))
"""


class NotAirbench(ValueError):
    """The file is not the airbench94.py this script knows how to adapt."""


def adapt(source: str) -> str:
    """airbench94.py's text, changed to run on the CPU from data/prepared (see the module's
    docstring); raises NotAirbench when any expected line is missing."""
    for old, new in SUBSTITUTIONS:
        if source.count(old) != 1:
            raise NotAirbench(f"expected exactly one {old.splitlines()[0].strip()!r}")
        source = source.replace(old, new)
    try:
        start = source.index("class CifarLoader:")
        end = source.index("    def __len__(self):", start)
        main = source.index('if __name__ == "__main__":')
    except ValueError:
        raise NotAirbench("no CifarLoader class or __main__ block") from None
    source = source[:start] + LOADER_INIT + source[end:main] + MAIN
    source = source.replace("torch.cuda.synchronize()", "pass")
    return source.replace("class Flatten(", PRELUDE + "\nclass Flatten(", 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--airbench", type=Path, required=True, help="legacy/airbench94.py")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "prepared")
    parser.add_argument("--widths", default="64/256/256", help="blocks 1/2/3 (airbench94's)")
    parser.add_argument("--epochs", type=float, default=9.9, help="airbench94: 9.9")
    parser.add_argument("--seeds", default="0", help="comma-separated, one training each")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    try:
        widths = [int(w) for w in args.widths.split("/")]
        seeds = [int(s) for s in args.seeds.split(",")]
        threads_ok = args.threads is None or args.threads >= 1
        if len(widths) != 3 or min(widths) < 1 or args.epochs <= 0 or not threads_ok:
            raise ValueError
    except ValueError:
        sys.exit(
            "error: --widths is three positive integers like 64/256/256, --epochs > 0, "
            "--seeds integers like 0,1,2 and --threads at least 1"
        )
    for split in ("train", "test"):
        if not (args.data / f"{split}.npz").is_file():
            sys.exit(f"error: {args.data / split}.npz not found: run `dvc repro prepare` first")
    try:
        source = adapt(args.airbench.read_text())
    except (OSError, UnicodeDecodeError, NotAirbench) as exc:
        sys.exit(f"error: {args.airbench}: not airbench's legacy/airbench94.py ({exc})")
    try:
        import torch
    except ImportError:
        sys.exit("error: PyTorch is not installed in this environment (see --help)")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Widths and epochs go in after airbench's `hyp` is defined, before its main block runs.
    head, tail = source.split('if __name__ == "__main__":')
    hook = (
        "\nhyp['net']['widths'] = dict(zip(('block1', 'block2', 'block3'), WIDTHS))\n"
        "hyp['opt']['train_epochs'] = EPOCHS\n"
    )
    namespace = {
        "__name__": "__main__", "DATA": str(args.data), "SEEDS": seeds,
        "WIDTHS": widths, "EPOCHS": args.epochs,
    }  # fmt: skip
    program = head + hook + 'if __name__ == "__main__":' + tail
    exec(compile(program, str(args.airbench), "exec"), namespace)  # noqa: S102


if __name__ == "__main__":
    main()

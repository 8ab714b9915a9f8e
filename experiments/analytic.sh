#!/usr/bin/env bash
# The analytic-learner tables of docs/results.md (about 40 minutes on 2 cores, 12 GB at M = 16k).
# Needs the feature sets of experiments/results.sh and the headstart package in `python`.
set -euo pipefail
cd "$(dirname "$0")/.."
D=experiments/out/docstrings
F=experiments/out/mnist-features
a() { python experiments/analytic.py --auto "$@"; }
a --features $D/features.npy --labels $D/labels.npy --name docstrings --out docs/results/analytic/docstrings
a --features $F/features.npy --labels $F/labels.npy --name mnist --out docs/results/analytic/mnist
a --name digits --out docs/results/analytic/digits

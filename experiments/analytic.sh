#!/usr/bin/env bash
# The analytic-learner tables of docs/results.md (about 10 minutes on 2 cores; M = 16k with held-out statistics needs more than 24 GB and is not run).
# Needs the feature sets of experiments/results.sh and the headstart package in `python`.
set -euo pipefail
cd "$(dirname "$0")/.."
D=experiments/out/docstrings
F=experiments/out/mnist-features
a() { python experiments/analytic.py --auto "$@"; }
a --features $D/features.npy --labels $D/labels.npy --name docstrings --seeds 2 --m 2048,4096,8192 --big 99999 --out docs/results/analytic/docstrings
a --features $F/features.npy --labels $F/labels.npy --name mnist --seeds 1 --m 2048,4096,8192 --big 99999 --out docs/results/analytic/mnist
a --name digits --seeds 1 --m 2048,4096,8192 --big 99999 --out docs/results/analytic/digits

#!/usr/bin/env bash
# The analytic-learner tables of docs/results.md (about 12 minutes on 2 cores; M = 16k runs one seed at one λ, without held-out statistics, which need more than 24 GB at that width).
# Needs the feature sets of experiments/results.sh and the headstart package in `python`.
set -euo pipefail
cd "$(dirname "$0")/.."
D=experiments/out/docstrings
F=experiments/out/mnist-features
a() { python experiments/analytic.py --auto "$@"; }
a --features $D/features.npy --labels $D/labels.npy --name docstrings --seeds 2 --m 2048,4096,8192 --big 99999 --out docs/results/analytic/docstrings
a --features $F/features.npy --labels $F/labels.npy --name mnist --seeds 1 --m 2048,4096,8192 --big 99999 --out docs/results/analytic/mnist
a --name digits --seeds 1 --m 2048,4096,8192 --big 99999 --out docs/results/analytic/digits
python experiments/analytic.py --features $D/features.npy --labels $D/labels.npy --name docstrings --seeds 1 --m 16384 --lams 0.1 --reference-m 0 --out docs/results/analytic/docstrings-16k

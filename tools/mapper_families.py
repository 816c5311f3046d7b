#!/usr/bin/env python3
"""Which regression family maps CLIP image embeddings to w best, on a pair bank.

Reads the pair cache that `clip2gan train --mode fit` (and first use) writes
(`manifest.json` + `pairs-*.safetensors`), and prints 5-fold cross-validated
latent MSE as a multiple of always-the-mean, on clean held-out embeddings
and on the same embeddings perturbed with LAFITE noise at xi 0.5 (the
stand-in for text that `eval-mapper --xi 0.5` uses). The acceptance bar of
the out-of-the-box mapper is <= 0.85x clean and <= 1.0x perturbed.

Families: ridge (what `src/train/fit.rs` fits), ridge on the top principal
components (projection onto the images' span), and kernel ridge with an RBF
kernel (predictions fall back to the mean far from every bank face, which is
what keeps it safe on off-distribution inputs). With --curve, the ridge's
held-out error at growing bank sizes.

    pip install numpy==2.4.6 scikit-learn==1.9.1
    python3 tools/mapper_families.py models/train/pairs [--curve]

The figures this printed on the project's machine are in the README
("Text to a face out of the box").
"""

import argparse
from pathlib import Path

import numpy as np
from pair_bank import lafite, read_bank
from sklearn.kernel_ridge import KernelRidge

def ridge(strength, components=None):
    """Ridge on centred embeddings, strength relative to the mean eigenvalue (as fit.rs)."""

    def fit(x, y):
        mean = x.mean(0)
        xc = x - mean
        basis = np.eye(x.shape[1])
        if components is not None:
            basis = np.linalg.svd(xc, full_matrices=False)[2][:components].T
        z = xc @ basis
        gram = z.T @ z
        scale = np.trace(gram) / x.shape[1]
        coef = np.linalg.solve(gram + strength * scale * np.eye(len(gram)), z.T @ y)
        return lambda q: (q - mean) @ basis @ coef

    return fit


def rbf_kernel_ridge(alpha, gamma):
    """Kernel ridge on the embeddings rotated to principal axes and scaled by the first one."""

    def fit(x, y):
        mean = x.mean(0)
        xc = x - mean
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        scale = s[0] / np.sqrt(len(x))
        model = KernelRidge(alpha=alpha, kernel="rbf", gamma=gamma).fit(xc @ vt.T / scale, y)
        return lambda q: model.predict((q - mean) @ vt.T / scale)

    return fit


def cross_validate(fit, e, w, e_perturbed, folds=5):
    n = len(e)
    clean, perturbed, baseline = [], [], []
    for k in range(folds):
        held = np.arange(k * n // folds, (k + 1) * n // folds)
        train = np.setdiff1d(np.arange(n), held)
        mean_w = w[train].mean(0)
        predict = fit(e[train], w[train] - mean_w)
        clean.append(np.mean((predict(e[held]) + mean_w - w[held]) ** 2))
        perturbed.append(np.mean((predict(e_perturbed[held]) + mean_w - w[held]) ** 2))
        baseline.append(np.mean((mean_w - w[held]) ** 2))
    return np.mean(clean) / np.mean(baseline), np.mean(perturbed) / np.mean(baseline)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bank", type=Path, help="the pair cache folder (with manifest.json)")
    parser.add_argument("--curve", action="store_true", help="also the ridge's learning curve")
    args = parser.parse_args()

    e, w = read_bank(args.bank)
    e_perturbed = lafite(e, 0.5, np.random.default_rng(0))
    print(f"{len(e)} pairs; x always-the-mean, 5-fold CV: clean / perturbed (xi 0.5)")
    families = [(f"ridge {s:g}", ridge(s)) for s in (0.1, 0.3, 1.0, 3.0)]
    families += [(f"ridge on top {k} PCs, {s:g}", ridge(s, k)) for k in (64, 128, 256) for s in (0.3, 1.0)]
    families += [
        (f"RBF kernel ridge alpha {a:g} gamma {g:g}", rbf_kernel_ridge(a, g))
        for a, g in ((0.3, 0.2), (1.0, 0.1), (1.0, 0.2), (1.0, 0.5))
    ]
    for name, fit in families:
        clean, perturbed = cross_validate(fit, e, w, e_perturbed)
        print(f"  {name:40s} {clean:.3f}  {perturbed:.3f}", flush=True)

    if args.curve:
        test = np.arange(3 * len(e) // 4, len(e))
        print(f"ridge learning curve, test = the last {len(test)} pairs: pairs, x mean for strengths 0.3 / 1 / 3")
        size = 256
        while size <= test[0]:
            train = np.arange(size)
            mean_w = w[train].mean(0)
            base = np.mean((mean_w - w[test]) ** 2)
            row = []
            for s in (0.3, 1.0, 3.0):
                predict = ridge(s)(e[train], w[train] - mean_w)
                row.append(np.mean((predict(e[test]) + mean_w - w[test]) ** 2) / base)
            print(f"  {size:6d}  " + "  ".join(f"{r:.3f}" for r in row), flush=True)
            size *= 2


if __name__ == "__main__":
    main()

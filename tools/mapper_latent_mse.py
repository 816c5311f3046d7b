#!/usr/bin/env python3
"""Latent MSE of mapper files on a pair bank, as a multiple of always-w_avg.

`eval-mapper` renders its held-out faces anew on every call (minutes for a
few hundred); choosing settings needs many mappers scored on one large
held-out set. This scores mapper files (the closed-form fit or an MLP, as
`clip2gan train` writes them) on a pair bank rendered once with another
seed, clean and with the embeddings perturbed by LAFITE noise at xi 0.5
(`eval-mapper --xi 0.5`'s stand-in for text). The forward pass is written
from `src/mapper/mod.rs` (leaky ReLU 0.2, the clamps); on the same faces its
figures agree with `eval-mapper`'s.

    pip install numpy==2.4.6
    CLIP2GAN_TRAIN__SEED=7 CLIP2GAN_TRAIN__RUN_DIR=/tmp/heldout \\
        CLIP2GAN_TRAIN__REFINE__STEPS=0 CLIP2GAN_MAPPER__PATH=/tmp/heldout/fit.safetensors \\
        clip2gan train --mode fit --pairs 1024
    python3 tools/mapper_latent_mse.py /tmp/heldout/pairs models/mapper.safetensors ...

How the refinement's defaults were chosen with it is in the README ("Text
to a face out of the box").
"""

import argparse
from pathlib import Path

import numpy as np
from pair_bank import lafite, read_bank, read_safetensors

LEAKY_SLOPE = 0.2


def clamp_rows(x, max_norm):
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, max_norm / np.maximum(norm, 1e-30))


def forward(t, e):
    """W+ `[n, styles, w_dim]` for embeddings `e` `[n, d]`."""
    w_avg = t["w_avg"].astype(np.float64)
    if "linear.weight" in t:  # the closed-form fit
        shift = e @ t["linear.weight"].T
        if "max_shift" in t:
            shift = clamp_rows(shift, float(t["max_shift"].reshape(-1)[0]))
        return (shift + t["linear.bias"] + w_avg)[:, None, :]
    x, i = e, 0
    while f"hidden.{i}.linear.weight" in t:
        x = x @ t[f"hidden.{i}.linear.weight"].T + t[f"hidden.{i}.linear.bias"]
        x = np.where(x > 0, x, LEAKY_SLOPE * x)
        i += 1
    if "hidden.0.norm.weight" in t:
        raise SystemExit("MLPs with layer norm are not covered here: use eval-mapper")
    residual = x @ t["out.weight"].T + t["out.bias"]
    if "max_residual" in t:
        residual = clamp_rows(residual, float(t["max_residual"].reshape(-1)[0]))
    return residual.reshape(len(e), -1, w_avg.shape[-1]) + w_avg


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pairs", help="a pair cache directory (manifest.json + pairs-*.safetensors)")
    ap.add_argument("mappers", nargs="+", help="mapper files")
    ap.add_argument("--xi", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the perturbation")
    a = ap.parse_args()
    e, w = read_bank(a.pairs)
    perturbed = lafite(e, a.xi, np.random.default_rng(a.seed))
    for path in a.mappers:
        t = read_safetensors(path)
        baseline = ((w - t["w_avg"]) ** 2).mean()
        clean = ((forward(t, e) - w[:, None, :]) ** 2).mean() / baseline
        noisy = ((forward(t, perturbed) - w[:, None, :]) ** 2).mean() / baseline
        print(f"{Path(path).name:40s} clean {clean:.4f}x  xi {a.xi}: {noisy:.4f}x  ({len(w)} pairs)")


if __name__ == "__main__":
    main()

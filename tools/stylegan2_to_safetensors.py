#!/usr/bin/env python3
"""Convert a StyleGAN2 checkpoint that clip2gan cannot read natively to safetensors.

clip2gan reads rosinality .pt files (zip and PyTorch < 1.6's legacy format)
and NVIDIA's PyTorch .pkl files (stylegan2-ada-pytorch, stylegan3's StyleGAN2
configs) itself, without Python. This script is for what is left:

- NVIDIA's original TensorFlow pickles (the TF StyleGAN2 release, e.g.
  stylegan2-ffhq-config-f.pkl): they hold TensorFlow variables, which only
  NVIDIA's legacy.py turns into PyTorch weights;
- PyTorch files clip2gan's reader refuses (from PyTorch before 0.4, or
  re-zipped with compression): torch.load and re-save.

    python3 tools/stylegan2_to_safetensors.py stylegan2-ffhq-config-f.pkl ffhq.safetensors \
        --nvidia-code /path/to/stylegan2-ada-pytorch
    python3 tools/stylegan2_to_safetensors.py old-rosinality.pt ffhq.safetensors

NVIDIA .pkl: loading needs NVIDIA's code (its `dnnlib`, `torch_utils` and
`legacy.py`) on the Python path: pass the repository with --nvidia-code, or
set PYTHONPATH. `legacy.load_network_pkl` reads both PyTorch and TF
pickles; the script takes `G_ema`, writes its state dict with NVIDIA's
tensor names, and records in the metadata what no tensor holds:
`conv_clamp` (ADA models use 256) and `mapping_lr_multiplier`. Only
unconditional generators with the 'skip' architecture are supported.

rosinality .pt (stylegan2-pytorch): writes `g_ema` (or a plain state dict)
plus `latent_avg` under rosinality's names.

Needs: torch and safetensors (pip install torch safetensors); this script is
not run by the tests, since NVIDIA's code is not available to them. Loading a
pickle with Python runs code from it: convert only files you trust.
"""

import argparse
import os
import sys

import torch
from safetensors.torch import save_file


def from_nvidia_pkl(path, code_dir):
    if code_dir:
        sys.path.insert(0, os.path.abspath(code_dir))
    try:
        import legacy  # NVIDIA's, from stylegan2-ada-pytorch or stylegan3
    except ImportError:
        sys.exit("cannot import NVIDIA's legacy.py: pass --nvidia-code /path/to/stylegan2-ada-pytorch (or stylegan3)")
    with open(path, "rb") as f:
        G = legacy.load_network_pkl(f)["G_ema"]
    if getattr(G, "c_dim", 0):
        sys.exit(f"{path}: conditional generator (c_dim = {G.c_dim}); clip2gan supports unconditional ones")
    if not hasattr(G.synthesis.b4, "torgb"):
        sys.exit(f"{path}: not a StyleGAN2 'skip' generator (no synthesis.b4.torgb)")
    clamp = G.synthesis.b4.conv1.conv_clamp
    meta = {
        "format": "stylegan2",
        "naming": "nvidia",
        "conv_clamp": "none" if clamp is None else str(float(clamp)),
        "mapping_lr_multiplier": str(float(G.mapping.fc0.bias_gain)),
        "source": os.path.basename(path),
    }
    return G.state_dict(), meta


def from_rosinality_pt(path):
    # weights_only=False: rosinality training checkpoints also pickle their
    # argparse options.
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt.get("g_ema", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not any(k.startswith(("input.", "style.")) for k in sd):
        sys.exit(f"{path}: no rosinality generator state dict (g_ema) found")
    sd = dict(sd)
    if isinstance(ckpt.get("latent_avg"), torch.Tensor):
        sd["latent_avg"] = ckpt["latent_avg"].reshape(-1)
    meta = {"format": "stylegan2", "naming": "rosinality", "source": os.path.basename(path)}
    return sd, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="NVIDIA .pkl or rosinality .pt")
    ap.add_argument("output", help="the .safetensors file to write")
    ap.add_argument("--nvidia-code", help="checkout of stylegan2-ada-pytorch or stylegan3 (for .pkl)")
    args = ap.parse_args()
    if args.input.endswith(".pkl"):
        sd, meta = from_nvidia_pkl(args.input, args.nvidia_code)
    else:
        sd, meta = from_rosinality_pt(args.input)
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
    save_file(tensors, args.output, metadata=meta)
    print(f"wrote {len(tensors)} tensors to {args.output} ({meta['naming']} names)")


if __name__ == "__main__":
    main()

"""Reading clip2gan's pair cache and mapper files with numpy, for the tools here.

The pair cache is what `clip2gan train` and first use write to
`<run_dir>/pairs/`: `manifest.json` and `pairs-*.safetensors` chunks holding
`w` [n, 2, w_dim], `cross` [n] and `e` [n, clip_dim].
"""

import json
import struct
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32, "U32": np.uint32}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    body = raw[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def read_bank(folder):
    """Embeddings [n, clip_dim] and w [n, w_dim] (the bank has one w for every style)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    embeddings, ws = [], []
    for chunk in manifest["chunks"]:
        t = read_safetensors(folder / chunk["file"])
        embeddings.append(t["e"])
        ws.append(t["w"][:, 0, :])
    return np.concatenate(embeddings).astype(np.float64), np.concatenate(ws).astype(np.float64)


def lafite(e, xi, rng):
    """LAFITE's perturbation: a random unit direction blended in, renormalised."""
    z = rng.standard_normal(e.shape)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    m = (1 - xi) * e + xi * z
    return m / np.linalg.norm(m, axis=1, keepdims=True)

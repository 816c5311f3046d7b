#!/usr/bin/env python3
"""Benchmark the clip2gan Rust generator against the OpenVINO reference.

Runs, on the same machine and in the same invocation:
  * ours:      `<bin> bench generator --batch B --size S --iters N`, which must
               print one stdout line of JSON with at least
               {"ms_per_image": float, "images_per_s": float}
               (the last stdout line that parses as a JSON object is used);
  * reference: the original MobileStyleGAN OpenVINO IR (random_face wheel),
               mapping + synthesis for B images on CPU, with the f32 inference
               precision hint and/or OpenVINO's default hint (bf16 on CPUs with
               avx512_bf16/AMX). Batch B uses model.reshape to [B, 512]; if that
               fails or gives a wrong output shape, B sequential infer calls.
               The reference always renders 1024x1024; for --size < 1024 its
               timing includes no resize.

Timing: 1 warm-up iteration, then N timed ones (time.perf_counter); the
median ms per image is reported. Human-readable lines go to stderr; the last
stdout line is one JSON object with both results and the ratios ours/reference.

Requirements: openvino==2026.4.0, numpy==2.4.6
(tests/fixtures/mobilestylegan/requirements.txt).

Example:
  python tools/bench_generator.py --batch 1 --size 1024 --iters 5 \
      --ir-dir /path/to/random_face/data
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import openvino as ov

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
# Finding and unpacking the reference IR: one copy, in the fixture script.
sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "fixtures", "mobilestylegan"))
from make_fixtures import add_ir_args, ir_dir_from  # noqa: E402

DEFAULT_BIN = os.path.join(REPO_ROOT, "target", "release", "clip2gan")
IMG_SHAPE = (3, 1024, 1024)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Reference:
    """Mapping + synthesis compiled for one precision hint and one batch size."""

    def __init__(self, core, ir_dir, batch, precision):
        self.batch = batch
        self.notes = []
        self.z = np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)
        config = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "f32" else {}
        self.batching = "reshape"
        try:
            self._compile(core, ir_dir, config, batch)
            out = self.run()
            if out.shape != (batch,) + IMG_SHAPE:
                raise ValueError(f"reshape gave output shape {tuple(out.shape)}")
        except Exception as e:  # noqa: BLE001 - any reshape problem -> fallback
            if batch == 1:
                raise
            self.notes.append(f"{type(e).__name__}: {e}")
            self.batching = "sequential"
            self._compile(core, ir_dir, config, 1)
        self.precision = self.synthesis.get_property("INFERENCE_PRECISION_HINT").to_string()
        if precision == "f32" and self.precision != "f32":
            sys.exit(f"error: f32 precision hint not honoured (got {self.precision})")

    def _compile(self, core, ir_dir, config, batch):
        map_model = core.read_model(os.path.join(ir_dir, "MappingNetwork.xml"))
        syn_model = core.read_model(os.path.join(ir_dir, "SynthesisNetwork.xml"))
        if batch != 1:
            map_model.reshape({map_model.input(0).get_any_name(): [batch, 512]})
            syn_model.reshape({syn_model.input(0).get_any_name(): [batch, 512]})
        self.mapping = core.compile_model(map_model, "CPU", config)
        self.synthesis = core.compile_model(syn_model, "CPU", config)
        self.map_req = self.mapping.create_infer_request()
        self.syn_req = self.synthesis.create_infer_request()

    def run(self):
        if self.batching == "reshape":
            w = self.map_req.infer({0: self.z})[self.mapping.output(0)]
            return self.syn_req.infer({0: w})[self.synthesis.output(0)]
        out = None
        for i in range(self.batch):
            w = self.map_req.infer({0: self.z[i : i + 1]})[self.mapping.output(0)]
            out = self.syn_req.infer({0: w})[self.synthesis.output(0)]
        return out

    def bench(self, iters):
        self.run()  # warm-up
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            self.run()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000.0 / self.batch


def parse_ours(stdout):
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and "ms_per_image" in obj:
            return obj
    return None


def run_ours(args):
    cmd = [
        args.bin, "bench", "generator",
        "--batch", str(args.batch), "--size", str(args.size), "--iters", str(args.iters),
    ]
    log("ours: " + " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"error: cannot run {args.bin}: {e}")
    if proc.stderr:
        for line in proc.stderr.rstrip().splitlines():
            log("  [ours] " + line)
    if proc.returncode != 0:
        sys.exit(f"error: {args.bin} exited with status {proc.returncode}")
    res = parse_ours(proc.stdout)
    if res is None:
        sys.exit("error: no JSON line with ms_per_image on the binary's stdout")
    ms = float(res["ms_per_image"])
    ips = float(res.get("images_per_s", 1000.0 / ms))
    log(f"ours: {ms:.1f} ms/image, {ips:.3f} images/s")
    return ms, ips


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=DEFAULT_BIN, help="clip2gan binary (default: target/release/clip2gan)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--size", type=int, default=1024, choices=[256, 512, 1024])
    ap.add_argument("--iters", type=int, default=5, help="timed iterations after 1 warm-up")
    add_ir_args(ap)
    ap.add_argument("--precision", choices=["f32", "default", "both"], default="both",
                    help="reference precision hint(s) (default: both)")
    ap.add_argument("--reference-only", action="store_true", help="skip the Rust binary")
    args = ap.parse_args()
    if args.batch < 1 or args.iters < 1:
        sys.exit("error: --batch and --iters must be >= 1")

    ours_ms = ours_ips = None
    if not args.reference_only:
        ours_ms, ours_ips = run_ours(args)

    precisions = ["f32", "default"] if args.precision == "both" else [args.precision]
    ref_ms = {"f32": None, "default": None}
    batching = None
    core = ov.Core()
    log(f"reference: OpenVINO {ov.__version__}, CPU, batch {args.batch}, renders 1024x1024"
        + (f" (no resize to {args.size} included in timing)" if args.size < 1024 else ""))
    with tempfile.TemporaryDirectory() as tmp:
        ir_dir = ir_dir_from(args, tmp)
        for p in precisions:
            ref = Reference(core, ir_dir, args.batch, p)
            for n in ref.notes:
                log(f"reference [{p}]: {n}; falling back to {args.batch} sequential infer calls")
            batching = ref.batching
            ref_ms[p] = ref.bench(args.iters)
            log(f"reference [{p}] (inference precision {ref.precision}, batching {ref.batching}): "
                f"{ref_ms[p]:.1f} ms/image, {1000.0 / ref_ms[p]:.3f} images/s")
            del ref

    def ratio(r):
        return None if ours_ms is None or r is None else ours_ms / r

    result = {
        "batch": args.batch,
        "size": args.size,
        "ours_ms_per_image": ours_ms,
        "ours_images_per_s": ours_ips,
        "reference_f32_ms_per_image": ref_ms["f32"],
        "reference_default_ms_per_image": ref_ms["default"],
        "ratio_vs_f32": ratio(ref_ms["f32"]),
        "ratio_vs_default": ratio(ref_ms["default"]),
        "reference_batching": batching,
        "reference_size": 1024,
        "openvino": ov.__version__,
    }
    for p in precisions:
        if ratio(ref_ms[p]) is not None:
            log(f"ratio ours/reference [{p}]: {ratio(ref_ms[p]):.2f} (lower is better for ours)")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

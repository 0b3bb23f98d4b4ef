"""Benchmark: ONNX Runtime vs PyTorch eager on this CPU, for the paper-sized VAVL (random weights).

- heads: the model on pre-extracted features (wav2vec2-large-sized audio features at 50 Hz, EfficientNet-B2 visual
  features at 30 fps), `--seconds` long;
- full: raw 16 kHz audio and 224x224 face crops in (12-layer wav2vec2-large-robust + EfficientNet-B2 + heads),
  `--seconds` of audio and `--full-frames` face crops per clip.

Batch 1 and 8, median of `--repeats` timed runs after one warm-up, the same number of threads for both. Also checks
that the two agree (max |logits difference|). Prints a table and writes bench/results/onnx.json.
Run: `python bench/bench_onnx.py [--quick]` (--quick: smaller inputs, heads and a 2-layer audio backbone).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(parts: str, batch: int, seconds: float, frames: int, config) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch)
    if parts == "heads":
        audio_frames, video_frames = int(seconds * 50), int(seconds * 30)
        return {
            "audio_features": torch.randn(batch, audio_frames, config.audio_feature_dim, generator=generator),
            "audio_features_mask": torch.ones(batch, audio_frames, dtype=torch.long),
            "visual_features": torch.randn(batch, video_frames, config.visual_feature_dim, generator=generator),
            "visual_features_mask": torch.ones(batch, video_frames, dtype=torch.long),
        }
    samples = int(seconds * 16000)
    return {
        "input_values": torch.randn(batch, samples, generator=generator) * 0.1,
        "attention_mask": torch.ones(batch, samples, dtype=torch.long),
        "pixel_values_videos": torch.randn(batch, frames, 3, 224, 224, generator=generator),
        "visual_features_mask": torch.ones(batch, frames, dtype=torch.long),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--full-seconds", type=float, default=2.0)
    parser.add_argument("--full-frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--parts", default="heads,full")
    args = parser.parse_args()

    from avemotion import VavlConfig, VavlForEmotionRecognition
    from avemotion.models.onnx_export import export_onnx
    from avemotion.models.onnx_runtime import OnnxRuntimeEmotionModel

    torch.set_num_threads(args.threads)
    overrides = {}
    if args.quick:
        from avemotion.models.vavl.configuration_vavl import wav2vec2_large_robust_config

        overrides["audio_backbone_config"] = wav2vec2_large_robust_config(num_hidden_layers=2)
        args.seconds, args.full_seconds, args.full_frames, args.repeats = 2.0, 1.0, 2, 2
    torch.manual_seed(0)
    model = VavlForEmotionRecognition(VavlConfig.from_preset("crema-d", **overrides)).eval()
    rows, env = [], {"threads": args.threads, "torch": torch.__version__}
    import onnxruntime

    env["onnxruntime"] = onnxruntime.__version__
    with tempfile.TemporaryDirectory() as tmp:
        for parts in args.parts.split(","):
            out = Path(tmp) / parts
            started = time.perf_counter()
            export_onnx(model, out, parts=parts)
            export_seconds = time.perf_counter() - started
            onnx_model = OnnxRuntimeEmotionModel.from_pretrained(out, num_threads=args.threads)
            for batch in (1, 8):
                seconds = args.seconds if parts == "heads" else args.full_seconds
                inputs = _inputs(parts, batch, seconds, args.full_frames, model.config)
                with torch.no_grad():
                    expected = model(**inputs).logits
                    torch_s = _time(lambda m=model, x=inputs: m(**x), args.repeats)
                diff = float((onnx_model(**inputs).logits - expected).abs().max())
                ort_s = _time(lambda m=onnx_model, x=inputs: m(**x), args.repeats)
                rows.append({"parts": parts, "batch": batch, "seconds": seconds,
                             "frames": args.full_frames if parts == "full" else int(seconds * 30),
                             "pytorch_ms": 1000 * torch_s, "onnxruntime_ms": 1000 * ort_s,
                             "speedup": torch_s / ort_s, "max_abs_diff": diff,
                             "export_s": round(export_seconds, 1)})  # fmt: skip
                print(rows[-1], flush=True)

    print(f"\nONNX Runtime vs PyTorch eager, VAVL crema-d preset, {args.threads} threads")
    print(f"{'parts':6} {'batch':>5} {'input':>16} {'PyTorch ms':>11} {'ORT ms':>9} {'speed-up':>9} {'max |Δ|':>9}")
    for r in rows:
        what = f"{r['seconds']:.0f} s, {r['frames']} fr"
        print(f"{r['parts']:6} {r['batch']:>5} {what:>16} {r['pytorch_ms']:>11.1f} {r['onnxruntime_ms']:>9.1f} "
              f"{r['speedup']:>8.2f}x {r['max_abs_diff']:>9.1e}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    name = "onnx_quick.json" if args.quick else "onnx.json"
    (RESULTS / name).write_text(json.dumps({"environment": env, "quick": args.quick, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()

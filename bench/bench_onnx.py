"""Benchmark: ONNX Runtime vs PyTorch eager for the paper-sized VAVL (random weights), on `--device`.

- heads: the model on pre-extracted features (wav2vec2-large-sized audio features at 50 Hz, EfficientNet-B2 visual
  features at 30 fps), `--seconds` long;
- full: raw 16 kHz audio and 224x224 face crops in (12-layer wav2vec2-large-robust + EfficientNet-B2 + heads),
  `--seconds` of audio and `--full-frames` face crops per clip.

PyTorch runs on `--device`; ONNX Runtime on its CUDA execution provider when the device is a GPU and the installed
onnxruntime has it (onnxruntime-gpu), else on its CPU provider: the table and the JSON name the provider (on CUDA,
ONNX Runtime's times include copying the inputs from and the outputs to host memory: its interface takes host
arrays). Batch 1 and 8, median of `--repeats` timed runs after one warm-up, the same number of CPU threads for both.
Also checks that the two agree (max |logits difference|). Prints a table and writes bench/results/onnx.json
(`--quick`: onnx_quick.json).
Run: `python bench/bench_onnx.py [--device cuda] [--quick]` (--quick: smaller inputs, a 2-layer audio backbone).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import add_device_argument, resolve_device, synchronize, write_results


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _providers(device: torch.device) -> list:
    """ONNX Runtime's CUDA execution provider on the GPU of `device` when it has one, else its CPU provider."""
    import onnxruntime

    if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        index = device.index if device.index is not None else torch.cuda.current_device()
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


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
    add_device_argument(parser)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--full-seconds", type=float, default=2.0)
    parser.add_argument("--full-frames", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--parts", default="heads,full")
    args = parser.parse_args()
    device = resolve_device(args.device)

    import onnxruntime

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
    rows, env = [], {"threads": args.threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        exported = {}
        for parts in args.parts.split(","):  # exported from the float32 CPU model
            started = time.perf_counter()
            export_onnx(model, Path(tmp) / parts, parts=parts)
            exported[parts] = time.perf_counter() - started
        model.to(device)
        for parts, export_seconds in exported.items():
            onnx_model = OnnxRuntimeEmotionModel.from_pretrained(
                Path(tmp) / parts, providers=_providers(device), num_threads=args.threads
            )
            provider = next(iter(onnx_model.sessions.values())).get_providers()[0]
            env["onnxruntime_provider"] = provider
            for batch in (1, 8):
                seconds = args.seconds if parts == "heads" else args.full_seconds
                inputs = _inputs(parts, batch, seconds, args.full_frames, model.config)  # CPU tensors: ORT's input
                on_device = {name: value.to(device) for name, value in inputs.items()}
                with torch.no_grad():
                    expected = model(**on_device).logits.cpu()
                    torch_s = _time(lambda m=model, x=on_device: m(**x), args.repeats, device)
                diff = float((onnx_model(**inputs).logits - expected).abs().max())
                ort_s = _time(lambda m=onnx_model, x=inputs: m(**x), args.repeats, device)
                rows.append({"parts": parts, "batch": batch, "seconds": seconds,
                             "frames": args.full_frames if parts == "full" else int(seconds * 30),
                             "pytorch_ms": 1000 * torch_s, "onnxruntime_ms": 1000 * ort_s,
                             "speedup": torch_s / ort_s, "max_abs_diff": diff, "onnxruntime_provider": provider,
                             "export_s": round(export_seconds, 1)})  # fmt: skip
                print(rows[-1], flush=True)

    print(f"\nONNX Runtime ({env['onnxruntime_provider']}) vs PyTorch eager on {device}, VAVL crema-d preset, "
          f"{args.threads} threads")  # fmt: skip
    print(f"{'parts':6} {'batch':>5} {'input':>16} {'PyTorch ms':>11} {'ORT ms':>9} {'speed-up':>9} {'max |Δ|':>9}")
    for r in rows:
        what = f"{r['seconds']:.0f} s, {r['frames']} fr"
        print(f"{r['parts']:6} {r['batch']:>5} {what:>16} {r['pytorch_ms']:>11.1f} {r['onnxruntime_ms']:>9.1f} "
              f"{r['speedup']:>8.2f}x {r['max_abs_diff']:>9.1e}")  # fmt: skip
    result = {"environment": env, "quick": args.quick, "rows": rows}
    write_results("onnx_quick.json" if args.quick else "onnx.json", result, device)


if __name__ == "__main__":
    main()

"""Benchmark: the bare model's inference throughput (clips/s) by precision and memory layout, on `--device`.

Paper-sized VAVL (`VavlConfig.from_preset("crema-d")`: 12-layer wav2vec2-large-robust + EfficientNet-B2 + VAVL
heads, random weights) on clips of `--seconds` of 16 kHz audio and `--frames` face crops of `--image-size` pixels,
and the multi-level fusion model (`MultiLevelFusionConfig()`: wav2vec2-base + BERT-base layouts, random weights) on
the same audio with `--tokens` transcript tokens. Rows (`--modes`):

- `fp32`: float32 weights, NCHW, PyTorch's TF32 defaults; the reference of every other row;
- `fp32-cl`: float32, channels-last convolution weights (`avemotion.utils.inference.use_channels_last`);
- `tf32-cl`: `fp32-cl` with TF32 matrix products and convolutions (`set_tf32(True)`; CUDA, with `--tf32`);
- `bf16-cl`, `fp16-cl`: the model cast to bfloat16 / float16 (`model.to(dtype)`), channels-last; float32 inputs;
- `autocast-bf16-cl`: float32 weights under `torch.autocast(dtype=torch.bfloat16)`, channels-last;
- with `--compile`: the `--compile-modes` rows again after `torch.compile` (`compile_model(model, True)`).

Each row: clips/s at each batch size (median of `--repeats` timed forwards after warm-up, `synchronize`d), CUDA peak
memory, the largest |probability difference| from the `fp32` row on the same device and inputs, and whether every
clip's top label equals the `fp32` one (`min_fp32_margin`: the smallest top-1 minus top-2 fp32 probability, to tell a
near-tie from a real disagreement). Prints a table and writes bench/results/inference.json (`--tiny`:
inference_tiny.json). Run: `python bench/bench_inference.py [--device cuda] [--tf32] [--compile] [--tiny]`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import time
from typing import Any

import torch
from _common import add_device_argument, resolve_device, synchronize, write_results

from avemotion.utils.inference import prepare_for_inference, set_tf32

# name -> (weights dtype, channels-last, autocast dtype, allow TF32)
MODES: dict[str, tuple[torch.dtype, bool, torch.dtype | None, bool | None]] = {
    "fp32": (torch.float32, False, None, None),
    "fp32-cl": (torch.float32, True, None, None),
    "tf32-cl": (torch.float32, True, None, True),
    "bf16-cl": (torch.bfloat16, True, None, None),
    "fp16-cl": (torch.float16, True, None, None),
    "autocast-bf16-cl": (torch.float32, True, torch.bfloat16, None),
}
DEFAULTS = {  # per device type: batch sizes, seconds, frames, modes, repeats
    "cpu": ("1,2", 1.0, 4, "fp32,fp32-cl,bf16-cl", 2),  # float16 convolutions are slow on CPUs (minutes)
    "cuda": ("1,8,32", 3.0, 75, "fp32,fp32-cl,bf16-cl,fp16-cl,autocast-bf16-cl", 3),
}


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_argument(parser)
    parser.add_argument("--batch-sizes", help="comma-separated (default: cpu 1,2; cuda 1,8,32)")
    parser.add_argument("--seconds", type=float, help="audio per clip (default: cpu 1; cuda 3)")
    parser.add_argument("--frames", type=int, help="face crops per clip (default: cpu 4; cuda 75)")
    parser.add_argument("--image-size", type=int, default=224, help="face crop size (VAVL's processor: 224)")
    parser.add_argument("--tokens", type=int, default=24, help="transcript tokens per clip (fusion model)")
    parser.add_argument("--modes", help=f"comma-separated of {', '.join(MODES)} (fp32 always runs first)")
    parser.add_argument("--tf32", action="store_true", help="add the tf32-cl row (CUDA)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows of --compile-modes")
    parser.add_argument("--compile-modes", default="bf16-cl", help="modes compiled with --compile")
    parser.add_argument("--repeats", type=int, help="timed forwards per batch size (default: cpu 2; cuda 3)")
    parser.add_argument("--visual-chunk-size", type=int, help="VAVL config.visual_backbone_chunk_size (default 64)")
    parser.add_argument("--models", default="vavl,fusion", help="vavl, fusion or both")
    parser.add_argument("--tiny", action="store_true", help="tiny configs and inputs (a smoke run in seconds)")
    parser.add_argument("--output", help="JSON path (default bench/results/inference.json)")
    args = parser.parse_args()
    args.device = resolve_device(args.device)
    batch_sizes, seconds, frames, modes, repeats = DEFAULTS["cuda" if args.device.type == "cuda" else "cpu"]
    if args.tiny:
        batch_sizes, seconds, frames, repeats, args.image_size, args.tokens = "1,3", 0.5, 3, 1, 32, 7
    args.batch_sizes = [int(b) for b in (args.batch_sizes or batch_sizes).split(",")]
    args.seconds = args.seconds or seconds
    args.frames = args.frames or frames
    args.repeats = args.repeats or repeats
    args.modes = ["fp32"] + [m for m in (args.modes or modes).split(",") if m != "fp32"]
    if args.tf32 and "tf32-cl" not in args.modes:
        args.modes.insert(2, "tf32-cl")
    unknown = [m for m in args.modes + args.compile_modes.split(",") if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; expected {list(MODES)}")
    if args.compile:
        args.modes += [f"{m}+compile" for m in args.compile_modes.split(",")]
    return args


def _tiny_configs() -> tuple[Any, Any]:
    """Tiny VAVL (wav2vec2 + EfficientNet backbones) and fusion configs: the same code paths in seconds."""
    from transformers import BertConfig, EfficientNetConfig, Wav2Vec2Config
    from transformers.models.efficientnet.modeling_efficientnet import round_filters

    from avemotion import MultiLevelFusionConfig, VavlConfig

    def wav2vec2(width: int) -> Wav2Vec2Config:
        return Wav2Vec2Config(hidden_size=width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                              conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                              num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
                              conv_bias=True)  # fmt: skip

    visual = EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, image_size=32, hidden_dim=1)
    visual.hidden_dim = round_filters(visual, 1280)
    vavl = VavlConfig.from_preset(
        "crema-d", audio_backbone_config=wav2vec2(16), visual_backbone_config=visual, audio_feature_dim=16,
        visual_feature_dim=visual.hidden_dim, projection_dim=8, hidden_size=32, num_attention_heads=4,
        intermediate_size=64, conv_kernel_size=5, num_modality_layers=2, num_shared_layers=1, head_hidden_sizes=[24],
    )  # fmt: skip
    text = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                      max_position_embeddings=64)  # fmt: skip
    fusion = MultiLevelFusionConfig(audio_config=wav2vec2(32), text_config=text, fusion_hidden_size=24,
                                    num_coattention_heads=2, coattention_ffn_size=40, classifier_hidden_size=16,
                                    initializer_range=0.3)  # fmt: skip
    return vavl, fusion


def _build(name: str, args: argparse.Namespace) -> torch.nn.Module:
    """The model on the CPU in float32, eval mode, seeded random weights."""
    from avemotion import (
        MultiLevelFusionConfig,
        MultiLevelFusionForEmotionRecognition,
        VavlConfig,
        VavlForEmotionRecognition,
    )

    tiny = _tiny_configs() if args.tiny else None
    torch.manual_seed(0)
    if name == "vavl":
        config = tiny[0] if tiny else VavlConfig.from_preset("crema-d")
        if args.visual_chunk_size:
            config.visual_backbone_chunk_size = args.visual_chunk_size
        return VavlForEmotionRecognition(config).eval()
    # the fusion heads' default init (std 0.02) gives near-uniform posteriors: a wider one makes labels meaningful
    config = tiny[1] if tiny else MultiLevelFusionConfig(initializer_range=0.3)
    return MultiLevelFusionForEmotionRecognition(config).eval()


def _inputs(name: str, model: torch.nn.Module, args: argparse.Namespace, batch: int) -> dict[str, torch.Tensor]:
    """`batch` clips of seeded random inputs, made on the device (every row gets the same ones)."""
    device = args.device
    generator = torch.Generator(device).manual_seed(0)
    samples = int(args.seconds * 16000)
    audio = {
        "input_values": torch.randn(batch, samples, generator=generator, device=device) * 0.1,
        "attention_mask": torch.ones(batch, samples, dtype=torch.long, device=device),
    }
    if name == "vavl":
        size = args.image_size
        pixels = torch.randn(batch, args.frames, 3, size, size, generator=generator, device=device)
        mask = torch.ones(batch, args.frames, dtype=torch.long, device=device)
        return {**audio, "pixel_values_videos": pixels, "visual_features_mask": mask}
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch, args.tokens), generator=generator, device=device)
    return {**audio, "input_ids": ids, "text_attention_mask": torch.ones_like(ids)}


def _tf32_state() -> tuple:
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):  # the API set_tf32 uses (torch >= 2.9 refuses mixing the two)
        return matmul.fp32_precision, conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _restore_tf32(state: tuple) -> None:
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision, conv.fp32_precision = state
    else:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = state


def _time_forward(model, inputs, autocast, device, repeats: int, warmup: int) -> tuple[float, torch.Tensor]:
    """(median seconds per forward, float32 logits of the last forward)."""
    context = torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext()
    times = []
    with torch.inference_mode(), context:
        for step in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            logits = model(**inputs).logits
            synchronize(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times), logits.float()


def _run_mode(name, base, mode, args, references) -> dict[str, Any]:
    """One row: the model prepared for `mode`, timed at every batch size, compared with the fp32 logits."""
    device, compiled = args.device, mode.endswith("+compile")
    dtype, channels_last, autocast, tf32 = MODES[mode.removesuffix("+compile")]
    saved = _tf32_state()
    set_tf32(tf32 if device.type == "cuda" else None)
    model = copy.deepcopy(base).to(device=device, dtype=dtype)
    prepare_for_inference(model, channels_last=channels_last, compile=compiled)
    row: dict[str, Any] = {"model": name, "mode": mode, "dtype": str(dtype).removeprefix("torch."),
                           "channels_last": channels_last, "autocast": autocast and str(autocast), "compile": compiled,
                           "tf32": str(_tf32_state()) if device.type == "cuda" else None, "batches": []}  # fmt: skip
    try:
        for batch in args.batch_sizes:
            inputs = _inputs(name, base, args, batch)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds, logits = _time_forward(model, inputs, autocast, device, args.repeats, 3 if compiled else 1)
            entry = {"batch": batch, "clips_per_s": round(batch / seconds, 3), "ms_per_batch": round(1e3 * seconds, 1)}
            if device.type == "cuda":
                entry["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if mode == "fp32":
                references[(name, batch)] = logits
            reference = references[(name, batch)].softmax(-1)
            probs = logits.softmax(-1)
            entry["max_abs_prob_diff"] = float((probs - reference).abs().max())
            entry["same_top_label"] = bool((probs.argmax(-1) == reference.argmax(-1)).all())
            top2 = reference.topk(2, dim=-1).values
            entry["min_fp32_margin"] = round(float((top2[:, 0] - top2[:, 1]).min()), 5)
            row["batches"].append(entry)
            print(f"  {name:6} {mode:22} batch {batch:>3}: {entry}", flush=True)
            del inputs
    finally:
        _restore_tf32(saved)
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def _print_table(rows: list[dict[str, Any]], device: torch.device) -> None:
    batches = [entry["batch"] for entry in rows[0]["batches"]]
    cuda = device.type == "cuda"
    header = f"{'model':6} {'mode':22}" + "".join(f" {'b' + str(b) + ' clips/s':>13}" for b in batches)
    header += f" {'peak GiB':>9}" * cuda + f" {'max |Δp|':>9} {'same label':>10}"
    print(f"\nInference throughput on {device}\n{header}")
    for row in rows:
        line = f"{row['model']:6} {row['mode']:22}" + "".join(f" {e['clips_per_s']:>13.2f}" for e in row["batches"])
        if cuda:
            line += f" {max(e['peak_memory_gib'] for e in row['batches']):>9.2f}"
        diff = max(e["max_abs_prob_diff"] for e in row["batches"])
        line += f" {diff:>9.1e} {str(all(e['same_top_label'] for e in row['batches'])):>10}"
        print(line)


def main() -> None:
    args = _parse_args()
    device = args.device
    print(f"device {device}; batches {args.batch_sizes}; {args.seconds:g} s clips, {args.frames} frames of "
          f"{args.image_size} px, {args.tokens} tokens; modes {args.modes}", flush=True)  # fmt: skip
    rows, references = [], {}
    started = time.perf_counter()
    for name in args.models.split(","):
        base = _build(name, args)
        for mode in args.modes:
            if name == "fusion" and mode.removesuffix("+compile") == "fp32-cl":
                continue  # the fusion model has no 2-D convolution: channels-last leaves it as fp32
            try:
                rows.append(_run_mode(name, base, mode, args, references))
            except Exception as error:  # a mode the device cannot run (e.g. compile without a compiler) is reported
                print(f"  {name} {mode}: FAILED {type(error).__name__}: {error}", flush=True)
                rows.append({"model": name, "mode": mode, "error": f"{type(error).__name__}: {error}"})
        del base
    ok = [row for row in rows if "error" not in row]
    for name in args.models.split(","):
        if any(row["model"] == name for row in ok):
            _print_table([row for row in ok if row["model"] == name], device)
    result = {
        "settings": {key: value for key, value in vars(args).items() if key != "device"},
        "rows": rows,
        "all_same_top_label": all(all(e["same_top_label"] for e in row["batches"]) for row in ok),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_results("inference_tiny.json" if args.tiny else "inference.json", result, device, args.output)
    if any("error" in row for row in rows):
        raise SystemExit("some modes failed (see the rows with an error)")


if __name__ == "__main__":
    main()

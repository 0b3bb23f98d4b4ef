"""`avemotion export-onnx`: write an ONNX model directory that `pipeline("audio-visual-emotion", model=OUT)` runs
with ONNX Runtime (`avemotion.models.onnx_export`, `avemotion.models.onnx_runtime`). Heavy imports happen in `run`."""

from __future__ import annotations

import argparse

PARTS = ("heads", "full")
EXPORTERS = ("torchscript", "dynamo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a saved avemotion model directory")
    parser.add_argument("--output_dir", required=True, help="where the ONNX model directory is written")
    parser.add_argument(
        "--parts",
        default="heads",
        choices=PARTS,
        help="heads: the model on pre-extracted features; full: raw 16 kHz audio and face crops (or token ids) in",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 17 torchscript, 18 dynamo)")
    parser.add_argument(
        "--exporter", default="torchscript", choices=EXPORTERS, help="torch's TorchScript or dynamo ONNX exporter"
    )
    parser.add_argument("--no_check", action="store_true", help="skip the ONNX Runtime parity check on random inputs")


def run(args: argparse.Namespace) -> int:
    from avemotion.models.onnx_export import check_parity, export_onnx

    path = export_onnx(args.model, args.output_dir, parts=args.parts, opset=args.opset, exporter=args.exporter)
    print(f"wrote {path}")
    if not args.no_check:
        report = check_parity(args.model, args.output_dir, parts=args.parts)
        print(f"ONNX Runtime vs PyTorch on random inputs: max |logits difference| = {report['max_abs_diff']:.2e}")
        if report["max_abs_diff"] > 1e-4:
            print("warning: the difference is above 1e-4")
            return 1
    return 0

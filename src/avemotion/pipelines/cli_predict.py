"""`avemotion predict`: run the audio-visual-emotion pipeline on files and print a table or JSON lines.

A file that cannot be used (unreadable, no sound track where one is needed, no face and no audio, ...) is reported on
its own line and the other files go on; the exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tqdm.auto import tqdm


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("files", nargs="*", help="video, audio or other media files")
    parser.add_argument("--model", required=True, help="a saved avemotion model directory (with its processor)")
    parser.add_argument(
        "--text", action="append", default=None,
        help="transcript for the audio-text model; give it once per file (in order), or without files",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    parser.add_argument("--top-k", type=int, default=3, help="labels shown per file (categorical models)")
    parser.add_argument("--window-seconds", type=float, help="analysis window (default: the model's)")
    parser.add_argument("--stride-seconds", type=float, help="hop between windows (default: the window)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0")
    return parser


def _inputs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    texts = args.text or []
    if args.files and texts and len(texts) != len(args.files):
        raise ValueError(f"give --text once per file: {len(args.files)} files but {len(texts)} transcripts")
    if not args.files and not texts:
        raise ValueError("nothing to predict: give media files and/or --text")
    if not args.files:
        return [(f"text #{i}", {"text": text}) for i, text in enumerate(texts)]
    if not texts:
        return [(path, path) for path in args.files]
    from avemotion.processing.media import media_streams

    inputs = []
    for path, text in zip(args.files, texts):
        try:
            has_audio, has_video = media_streams(path)
        except ValueError:  # reported per file by the pipeline
            has_audio, has_video = True, False
        media = {"audio": path if has_audio else None, "video": path if has_video else None}
        inputs.append((path, {**media, "text": text}))
    return inputs


def _describe(result: Any, top_k: int) -> str:
    """One readable cell: top labels with scores, or attribute values."""
    predictions = result.get("predictions") if isinstance(result, dict) else result
    if isinstance(predictions, list):
        return ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions[:top_k])
    return ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float))


def _modalities(result: Any) -> list[str]:
    return result.get("modalities", []) if isinstance(result, dict) else result[0]["modalities"]


def run(args: argparse.Namespace) -> int:
    from transformers import pipeline

    import avemotion  # noqa: F401  (registers the task)

    inputs = _inputs(args)
    pipe = pipeline("audio-visual-emotion", model=args.model, device=args.device)
    options = {"top_k": None, "batch_size": args.batch_size}
    for name in ("window_seconds", "stride_seconds"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    failures = 0
    if not args.json:
        print(f"{'input':<40} {'modalities':<16} prediction")
    for name, item in tqdm(inputs, desc="predict", unit="file", disable=len(inputs) < 2, file=sys.stderr):
        try:
            result = pipe(item, **options)
        except (ValueError, OSError) as error:
            failures += 1
            if args.json:
                print(json.dumps({"input": name, "error": str(error)}))
            else:
                print(f"{name:<40} {'-':<16} ERROR: {error}")
            continue
        if args.json:
            print(json.dumps({"input": name, "result": result}))
            continue
        print(f"{name:<40} {'+'.join(_modalities(result)):<16} {_describe(result, args.top_k)}")
        for window in result.get("windows", []) if isinstance(result, dict) else []:
            span = f"  [{window['start']:.1f}-{window['end']:.1f} s]"
            print(f"{span:<40} {'+'.join(window['modalities']):<16} {_describe(window, args.top_k)}")
        notes = result.get("notes") if isinstance(result, dict) else result[0].get("notes")
        for note in notes or []:
            print(f"{'':<40} note: {note}")
    return 1 if failures else 0

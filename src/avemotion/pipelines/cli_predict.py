"""`avemotion predict`: run the audio-visual-emotion pipeline on files and print a table or JSON lines.

With `--output RESULTS.jsonl` (and many inputs with `--inputs`: a folder, a list, a table or a saved dataset), the
records go to that file in input order, resumably, and under `accelerate launch` the processes share the inputs,
each on its own device (`avemotion.pipelines.corpus_prediction`).

A file that cannot be used (unreadable, no sound track where one is needed, no face and no audio, ...) is reported on
its own line and the other files go on (the pipeline's `errors="skip"`); the exit status is 1 when any file failed.
A `--model` that cannot be loaded (no such directory, no processor or weights, a truncated `model.safetensors`) is
one error line naming it (exit status 2, see `avemotion.cli`).

`--plot OUT.png` draws each result along time (`avemotion.plotting.plot_timeline`): with one input into OUT.png, with
several into `OUT-<input stem>.png` each (`plot_paths`; a repeated stem gets `-2`, `-3`, ...).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("files", nargs="*", help="video, audio or other media files")
    parser.add_argument("--model", required=True, help="a saved avemotion model directory (with its processor)")
    parser.add_argument(
        "--text", action="append", default=None,
        help="transcript for the audio-text model; give it once per file (in order), or without files",
    )  # fmt: skip
    parser.add_argument(
        "--inputs", default=None, metavar="DIR_LIST_OR_TABLE",
        help="many inputs: a folder of media files, a list file (one path per line), a table (.parquet, .csv, "
        ".jsonl with audio/video/text columns) or a save_to_disk dataset (with --split); with --output",
    )  # fmt: skip
    parser.add_argument("--split", default=None, help="with --inputs DATASET_DICT: the split to predict")
    parser.add_argument(
        "--output", default=None, metavar="RESULTS.jsonl",
        help="write one JSON record per input there, in input order (resumable; needed under accelerate launch "
        "with several processes, which share the inputs)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object per file")
    parser.add_argument("--top_k", type=int, default=3, help="labels shown per file (categorical models)")
    parser.add_argument("--window_seconds", type=float, help="analysis window (default: the model's)")
    parser.add_argument("--stride_seconds", type=float, help="hop between windows (default: the window)")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda:0")
    parser.add_argument(
        "--num_workers", type=int, default=0,
        help="processes that decode and crop the files while the model runs (0: in this process)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="the model's floating-point type (default: as saved); bfloat16/float16 are faster on GPUs",
    )  # fmt: skip
    parser.add_argument("--torch_compile", action="store_true", help="torch.compile the model (slow first batches)")
    parser.add_argument(
        "--tf32", action="store_true", help="let float32 matrix products on CUDA use TF32 (~1e-3 relative changes)"
    )
    parser.add_argument(
        "--plot", default=None, metavar="OUT.png",
        help="draw each input's emotions along time (windows, modalities used) into OUT.png; with several inputs "
        "into OUT-<input stem>.png each (needs matplotlib: pip install 'avemotion[plot]')",
    )  # fmt: skip
    return parser


def plot_paths(out: str | Path, names: list[str]) -> list[Path]:
    """Where `--plot OUT` draws each input: OUT itself for one input; else `OUT-<stem of the input>` with OUT's
    suffix (`.png` when it has none), a stem used twice getting `-2`, `-3`, ... . Transcripts without a file
    (`text #k`) are named `text-k`."""
    out = Path(out)
    suffix = out.suffix or ".png"
    if len(names) == 1:
        return [out.with_suffix(suffix)]
    paths, seen = [], {}
    for name in names:
        stem = re.sub(r"[^\w.-]+", "-", Path(name).stem).strip("-.") or "input"
        seen[stem] = seen.get(stem, 0) + 1
        unique = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        paths.append(out.with_name(f"{out.stem}-{unique}{suffix}"))
    return paths


def _media_seconds(path: str) -> float | None:
    """The duration of a media file as its container declares it (None when it does not say, or for text)."""
    import av

    try:
        with av.open(path) as container:
            return container.duration / av.time_base if container.duration else None
    except (OSError, ValueError, av.error.FFmpegError):
        return None


def _write_plot(path: Path, name: str, item: Any, result: Any, config: Any) -> None:
    """Draw one input's result into `path` (see `plot_paths`)."""
    from avemotion.plotting import plot_timeline, save_figure

    media = item if isinstance(item, str) else (item.get("video") or item.get("audio"))
    duration = None  # a windowed result spans its windows; a short clip's one bar spans the file
    if media and not (isinstance(result, dict) and "windows" in result):
        duration = _media_seconds(media)
    labels = [config.id2label[key] for key in sorted(config.id2label, key=int)]
    scale = getattr(config, "label_scale", None) if config.problem_type == "regression" else None
    figure = plot_timeline(result, duration=duration, scale=scale, labels=labels, title=Path(name).name)
    written = save_figure(figure, path)
    print(f"plot: wrote {written}", file=sys.stderr)


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


def _run_to_file(args: argparse.Namespace) -> int:
    """`--output`: the inputs (files, `--inputs`) shared by the processes, records written in input order."""
    from avemotion.utils.distributed import is_main_process, process_state

    from .corpus_prediction import predict_corpus, read_inputs

    if args.plot is not None:
        raise ValueError("--plot draws single predictions; with --output, plot from the records afterwards")
    inputs = _inputs(args) if args.files or args.text else []
    if args.inputs is not None:
        inputs += read_inputs(args.inputs, args.split)
    if not inputs:
        raise ValueError("nothing to predict: give media files, --text or --inputs")
    state = process_state()
    device = args.device or (str(state.device) if state.num_processes > 1 else None)  # each process its device
    speed = {"torch_compile": args.torch_compile, "tf32": True if args.tf32 else None}
    pipe = load_pipeline(args.model, device, args.dtype, **speed)
    options = {"top_k": None}
    for name in ("window_seconds", "stride_seconds"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    pipe._sanitize_parameters(**options)  # bad options: fail before any input
    records = predict_corpus(pipe, inputs, args.output, batch_size=args.batch_size, num_workers=args.num_workers,
                             **options)  # fmt: skip
    failures = sum("error" in record for record in records)
    if is_main_process():
        print(f"wrote {args.output}: {len(records)} records, {failures} errors")
    return 1 if failures else 0


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_PROCESSOR_CLASS = "AvEmotionProcessor"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _check_processor_class(path: Path) -> None:
    """`processor_config.json` names the avemotion processor, when it names a class: `AutoProcessor` builds whatever
    class it names (a transformers class, or asks to run the directory's code when the name is unknown)."""
    config = path / _PROCESSOR_FILES[0]
    if not config.is_file():
        return
    try:
        saved = json.loads(config.read_text(encoding="utf-8"))
    except RecursionError as error:
        raise ValueError(f"{config}: cannot be read as JSON (nested too deeply)") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config}: cannot be read as JSON ({error})") from error
    name = saved.get("processor_class", _PROCESSOR_CLASS) if isinstance(saved, dict) else None
    if name != _PROCESSOR_CLASS:
        shown = name if isinstance(saved, dict) else f"a JSON {type(saved).__name__}, not an object"
        raise ValueError(f"{config}: processor_class = {shown!r}: expected {_PROCESSOR_CLASS!r}")


def check_model_dir(model: str) -> None:
    """Raise a one-line `ValueError` for the usual reasons a `--model` directory cannot be used (transformers would
    raise an `OSError` or a `SafetensorError` with a traceback, or none naming the file). A name that is not a local
    path but may be a Hub id is left to transformers."""
    path = Path(model).expanduser()
    if not path.exists():
        if _HUB_ID.fullmatch(model) and not model.startswith("."):
            return
        raise ValueError(f"--model {model!r}: no such directory")
    if not path.is_dir():
        raise ValueError(f"--model {model!r}: is a file; expected a directory saved with save_pretrained")
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {model!r}: no config.json; expected a directory saved with save_pretrained")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        raise ValueError(f"--model {model!r}: no model weights ({' or '.join(_WEIGHT_FILES)})")
    if not any((path / name).is_file() for name in _PROCESSOR_FILES):
        raise ValueError(
            f"--model {model!r}: no processor ({_PROCESSOR_FILES[0]}); save the model's AvEmotionProcessor next to it "
            "(processor.save_pretrained(DIR))"
        )
    _check_processor_class(path)
    from avemotion.models.loading_checks import check_weight_files

    # the shard names of a weight index are data: each a plain file name inside the directory
    shards = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else []
    shards += [s for s in check_weight_files(path) if s.name.endswith(".safetensors")]
    from safetensors import SafetensorError, safe_open

    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{shard}: cannot read the weights ({error}); the file is truncated or corrupt"
            ) from error


def load_pipeline(model: str, device: str | None = None, dtype: str | None = None, **options: Any):
    """`pipeline("audio-visual-emotion", model=model, device=device, dtype=dtype, **options)` (`options`: the
    pipeline's `num_workers`, `torch_compile`, `tf32`, ...), with loading failures as one-line `ValueError`s."""
    from transformers import pipeline  # the task and the models are registered: this module is inside avemotion

    check_model_dir(model)
    if dtype is not None:
        import torch

        options["dtype"] = getattr(torch, dtype)
    try:
        return pipeline("audio-visual-emotion", model=model, device=device, **options)
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"--model {model!r}: cannot load the model and its processor: {message}") from error


def _describe(result: Any, top_k: int) -> str:
    """One readable cell: top labels with scores, or attribute values."""
    predictions = result.get("predictions") if isinstance(result, dict) else result
    if isinstance(predictions, list):
        return ", ".join(f"{p['label']} {p['score']:.2f}" for p in predictions[:top_k])
    return ", ".join(f"{k} {v:.2f}" for k, v in result.items() if isinstance(v, float))


def _modalities(result: Any) -> list[str]:
    return result.get("modalities", []) if isinstance(result, dict) else result[0]["modalities"]


def _is_error(result: Any) -> bool:
    return isinstance(result, dict) and set(result) == {"error", "input"}


def _check_plot(out: str | None, names: list[str]) -> list[Path] | None:
    """The `--plot` paths (`plot_paths`), after checking that matplotlib is there and the format is one it writes."""
    if out is None:
        return None
    from avemotion.plotting import require_matplotlib

    try:
        require_matplotlib()
    except ImportError as error:
        raise ValueError(f"--plot: {error}") from error
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix and suffix not in formats:
        raise ValueError(f"--plot {out}: unknown image format {suffix!r}; use one of {sorted(formats)}")
    return plot_paths(out, names)


def run(args: argparse.Namespace) -> int:
    from avemotion.pipelines.audio_visual_emotion import check_seconds

    # option errors before the model loads (the pipeline checks them again against the model's window)
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.num_workers < 0:
        raise ValueError(f"--num_workers must be at least 0, got {args.num_workers}")
    for name in ("window_seconds", "stride_seconds"):
        if getattr(args, name) is not None:
            check_seconds(getattr(args, name), name)
    if (
        args.window_seconds is not None
        and args.stride_seconds is not None
        and args.stride_seconds > args.window_seconds
    ):
        raise ValueError(
            f"stride_seconds ({args.stride_seconds}) must not exceed window_seconds ({args.window_seconds})"
        )
    if args.output is not None:
        return _run_to_file(args)
    if args.inputs is not None:
        raise ValueError("--inputs needs --output RESULTS.jsonl (records are written there, resumable)")
    from avemotion.utils.distributed import process_state

    if process_state().num_processes > 1:
        raise ValueError("under several processes, give --output RESULTS.jsonl: they share the inputs and write there")
    inputs = _inputs(args)
    plots = _check_plot(args.plot, [name for name, _ in inputs])
    speed = {"torch_compile": args.torch_compile, "tf32": True if args.tf32 else None}
    pipe = load_pipeline(args.model, args.device, args.dtype, **speed)
    options = {"top_k": None, "batch_size": args.batch_size, "num_workers": args.num_workers, "errors": "skip"}
    for name in ("window_seconds", "stride_seconds"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    # bad options: fail early
    pipe._sanitize_parameters(**{k: v for k, v in options.items() if k not in ("batch_size", "num_workers")})
    failures = 0
    if not args.json:
        print(f"{'input':<40} {'modalities':<16} prediction")
    results = pipe((item for _, item in inputs), **options)
    progress = tqdm(inputs, desc="predict", unit="file", disable=len(inputs) < 2, file=sys.stderr)
    for index, ((name, item), result) in enumerate(zip(progress, results)):
        if plots and not _is_error(result):
            _write_plot(plots[index], name, item, result, pipe.model.config)
        if _is_error(result):
            failures += 1
            if args.json:
                print(json.dumps({"input": name, "error": result["error"]}))
            else:
                print(f"{name:<40} {'-':<16} ERROR: {result['error']}")
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

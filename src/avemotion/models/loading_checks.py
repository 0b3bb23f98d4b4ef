"""The weight files of a local model directory stay inside it.

transformers 5 joins every shard name of a weight index (`model.safetensors.index.json` `weight_map`) to the
directory without a check: `"../outside.safetensors"` loads tensors from outside the model directory and
`"/etc/passwd"` is opened (and its error tells whether it exists). `check_weight_files` refuses such a directory
before transformers reads a weight, and `ContainedWeightsMixin` runs it at the start of `from_pretrained`, with
`check_weight_formats`: the weights are safetensors files whose headers parse and fit the file (transformers' loader
would raise a bare `SafetensorError` naming no file), never pickles (`pytorch_model*.bin`, which unpickling would run).

Generic: it names no model. Mix it in before `PreTrainedModel`:

    class MyPreTrainedModel(ContainedWeightsMixin, PreTrainedModel): ...
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.utils import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from avemotion.utils.paths import contained_file

INDEX_NAMES = (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME)
# files transformers opens by these fixed names: a symlink among them must not lead out of the directory either
FIXED_NAMES = (CONFIG_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, *INDEX_NAMES)


def _with_variant(name: str, variant: str | None) -> str:
    """transformers' naming of a weight file of a `variant` (`model.safetensors` -> `model.fp16.safetensors`)."""
    if not variant:
        return name
    stem, extension = name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError as error:  # valid JSON nested deeper than Python's parser goes
        raise ValueError(f"{path}: cannot be read as a weight index (JSON nested too deeply)") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot be read as a weight index ({error})") from error
    if not isinstance(index, dict):
        raise ValueError(
            f"{path}: expected a JSON object with `metadata` and `weight_map`, got {type(index).__name__}"
        )
    if not isinstance(index.get("weight_map"), dict):
        raise ValueError(f"{path}: weight_map: expected an object (tensor name -> shard file name)")
    if not isinstance(index.get("metadata", {}), dict):
        raise ValueError(f"{path}: metadata: expected an object")
    return index


def check_weight_files(directory: str | os.PathLike, subfolder: str = "", variant: str | None = None) -> list[Path]:
    """Check a local model directory's weight files before transformers reads them; returns the shard files its
    weight indexes name (empty for a single-file checkpoint).

    Every shard name of a weight index must be a plain file name inside the directory (`contained_file`), and none
    of the files transformers opens by a fixed name (config, weights, indexes) may be a symlink leading out of it.
    A `ValueError` names the index file and the `weight_map` entry, e.g.
    `DIR/model.safetensors.index.json: weight_map['head.weight'] = '../x.safetensors': a file name must stay ...`.
    """
    root = Path(directory) / subfolder if subfolder else Path(directory)
    indexes = [_with_variant(name, variant) for name in INDEX_NAMES] if variant else list(INDEX_NAMES)
    for name in dict.fromkeys([*FIXED_NAMES, *(_with_variant(n, variant) for n in FIXED_NAMES), *indexes]):
        if os.path.lexists(root / name):
            contained_file(root, name, "a file of the checkpoint")
    shards: dict[str, Path] = {}
    for name in indexes:
        index_path = root / name
        if not os.path.lexists(index_path):
            continue
        for tensor, shard in _read_index(index_path)["weight_map"].items():
            if isinstance(shard, str) and shard in shards:
                continue  # each shard name once (an index names one shard for many tensors)
            shards[shard] = contained_file(root, shard, f"weight_map[{tensor!r}]", source=index_path)
    return list(shards.values())


def check_weight_formats(directory: str | os.PathLike, subfolder: str = "", variant: str | None = None) -> list[Path]:
    """Check the weight files transformers would load from a local model directory (after `check_weight_files`);
    returns the safetensors files checked.

    - The weights must be safetensors: a directory with only pickled weights (`pytorch_model*.bin`, or their index)
      is refused without unpickling anything (say: convert them to safetensors), and every shard a
      `model.safetensors.index.json` names must be a `.safetensors` file.
    - Each safetensors file's header is opened with `safetensors.safe_open` (the header only, no tensor is read):
      it must parse, name known dtypes, and give each tensor a byte range that fits its shape and dtype and lies in the
      file (safetensors checks these when it opens the file). A `ValueError` names the file.
    """
    from safetensors import SafetensorError, safe_open

    root = Path(directory) / subfolder if subfolder else Path(directory)
    single = root / _with_variant(SAFE_WEIGHTS_NAME, variant)
    index = root / _with_variant(SAFE_WEIGHTS_INDEX_NAME, variant)
    if not os.path.lexists(single) and not os.path.lexists(index):
        pickled = sorted(root.glob("pytorch_model*.bin")) + sorted(root.glob("pytorch_model*.bin.index.json"))
        if pickled:
            raise ValueError(
                f"{pickled[0]}: pickled PyTorch weights are not loaded (unpickling a file can run code); convert "
                f"them to safetensors ({SAFE_WEIGHTS_NAME}: load them where you trust the file and "
                "`save_pretrained(DIR)`)"
            )
        return []  # no weights: transformers' own OSError names the directory
    files = [single] if os.path.lexists(single) else []
    if os.path.lexists(index):
        for tensor, shard in _read_index(index)["weight_map"].items():
            if not shard.endswith(".safetensors"):
                raise ValueError(
                    f"{index}: weight_map[{tensor!r}] = {shard!r}: a shard must be a .safetensors file (pickled "
                    "weights are not loaded: convert them to safetensors)"
                )
            if root / shard not in files:
                files.append(root / shard)
    for file in files:
        if not file.is_file():
            continue  # a missing shard: transformers' error names it
        try:
            with safe_open(str(file), framework="pt") as opened:
                opened.keys()
        except (SafetensorError, OSError, ValueError) as error:
            reason = " ".join(str(error).split())[:300]
            raise ValueError(
                f"{file}: not a valid safetensors file ({reason}); the file is truncated, corrupt or not safetensors"
            ) from error
    return files


class ContainedWeightsMixin:
    """`from_pretrained` that runs `check_weight_files` on a local directory before transformers loads it (a Hub id
    is left to huggingface_hub, which refuses file names with a `..` segment or an absolute, drive or UNC path), and
    runs `check_weight_formats` (safetensors only, with headers that parse and fit their files), and refuses weights
    that do not belong to the model the config describes: none of them matching (a `config.json`
    of another model type next to these weights: transformers would warn and run a randomly initialised model) or a
    tensor of another shape (transformers' RuntimeError names no file). A head missing from an otherwise matching
    checkpoint stays transformers' warning (fine-tuning a base model's checkpoint)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *model_args: Any, **kwargs: Any) -> Any:
        from safetensors import SafetensorError

        if pretrained_model_name_or_path is not None and os.path.isdir(pretrained_model_name_or_path):
            if kwargs.get("use_safetensors") is False:
                raise ValueError(
                    f"{pretrained_model_name_or_path}: use_safetensors=False: only safetensors weights are loaded "
                    "(pickled weights can run code when unpickled)"
                )
            subfolder, variant = kwargs.get("subfolder") or "", kwargs.get("variant")
            check_weight_files(pretrained_model_name_or_path, subfolder, variant)
            check_weight_formats(pretrained_model_name_or_path, subfolder, variant)
        want_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:  # a file that changed after the check, or one the check does not see
            reason = " ".join(str(error).split())[:300]
            raise ValueError(
                f"{pretrained_model_name_or_path}: cannot read its safetensors weights ({reason})"
            ) from error
        except RuntimeError as error:
            if "size" not in str(error) and "shape" not in str(error):
                raise
            reason = " ".join(str(error).split())[:300]
            raise ValueError(
                f"{pretrained_model_name_or_path}: its weights do not fit the model its config.json describes "
                f"({reason})"
            ) from error
        expected = set(model.state_dict())
        if expected and set(info.get("missing_keys") or ()) >= expected:
            raise ValueError(
                f"{pretrained_model_name_or_path}: none of its weights belong to {cls.__name__} (model_type "
                f"{model.config.model_type!r} in config.json does not describe these weights)"
            )
        return (model, info) if want_info else model


@contextlib.contextmanager
def pretrained_backbone_errors(path: Any) -> Iterator[None]:
    """Loading a pretrained backbone from `path` (`from_backbones`): a pickled `pytorch_model.bin` that
    `torch.load(weights_only=True)` refuses (it names more than tensors; nothing of it ran) is a `ValueError` naming
    the directory, instead of torch's `UnpicklingError`, which names no file and advises the unsafe load."""
    try:
        yield
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path}: its pickled weights (pytorch_model.bin) hold more than tensors and were refused by torch's "
            "weights_only loader (nothing in them ran); use a safetensors checkpoint of the backbone"
        ) from error


__all__ = ["ContainedWeightsMixin", "check_weight_files", "pretrained_backbone_errors", "check_weight_formats"]

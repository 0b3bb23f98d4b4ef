"""A fast seeded subset of the model-directory fuzz harness (`bench/fuzz_model_dirs.py`): 20 crafted directories, at
least one of every category (config values, backbone sub-configs, config structure, lying safetensors headers, weight
indexes, processor configs, remote code, planted pickles, ONNX exports, run directories for `--resume`), through
`from_pretrained`, the pipeline, `avemotion predict`, `evaluate`, `export-onnx` and `train --resume`.

Pass: no payload ran, nothing hung, and every refusal is a `ValueError`/`OSError` naming the directory, the file or
the field. The harness itself is checked too: it sees a payload that runs, a hang, a process that dies, an unclear
error and a harmful directory accepted.
"""

import os
import pickle
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz_model_dirs  # noqa: E402

# a target may not apply to a base at all: `avemotion predict` takes PyTorch model directories, not ONNX exports
NOT_APPLICABLE = {("onnx", "predict")}


def test_fuzzed_model_directories_give_clean_errors():
    result = fuzz_model_dirs.fuzz(fast=True, seed=1)
    failures = "\n".join(
        f"{f['target']} {f['directory']} {f['base']} [{f['mutation']}]: {f['detail']}" for f in result["failures"]
    )
    assert not result["failures"], f"{len(result['failures'])} FAIL:\n{failures}"
    skipped = {(base, target) for base, targets in result["skipped_targets"].items() for target in targets}
    assert skipped <= NOT_APPLICABLE, result["skipped_targets"]  # the valid bases load everywhere else
    categories = {spec.category for spec in fuzz_model_dirs.all_specs(_context(Path("/nonexistent")))}
    assert categories <= set(result["counts"]), categories - set(result["counts"])
    assert result["directories"] == 20 + len(fuzz_model_dirs.BASE_TARGETS)
    every = result["counts"]["all"]
    assert all(sum(every[target].values()) >= 3 for target in fuzz_model_dirs.TARGETS), every


# ------------------------------------------------------------------------------------------- the harness itself


def _context(root: Path) -> "fuzz_model_dirs.Context":
    return fuzz_model_dirs.Context(root, {}, root / "clip.mp4", root, root, "checkpoint-0000001", ())


def _case(root: Path, name: str, expect: str = "error", names=("x.pkl",)) -> "fuzz_model_dirs.Case":
    path = root / "cases" / name
    path.mkdir(parents=True)
    marker = fuzz_model_dirs.ctx_marker(path)
    marker.parent.mkdir(exist_ok=True)
    return fuzz_model_dirs.Case(name, "control", "vavl", name, expect, names, False, (name,), path, marker)


def _unsafe_load(case, ctx, scratch):
    with open(case.path / "x.pkl", "rb") as handle:
        pickle.load(handle)  # what the package must never do with a file it was given


def _sleep(case, ctx, scratch):
    time.sleep(60)


def _die(case, ctx, scratch):
    os._exit(3)


def _key_error(case, ctx, scratch):
    raise KeyError("weight_map")


def _clean(case, ctx, scratch):
    raise ValueError(f"{case.path / 'x.pkl'}: a pickle, refused")


def _vague(case, ctx, scratch):
    raise ValueError("something is wrong")


def _accept(case, ctx, scratch):
    return None


def test_the_harness_sees_payloads_hangs_deaths_unclear_errors_and_accepted_directories(tmp_path, monkeypatch):
    controls = {"unsafe-load": _unsafe_load, "sleep": _sleep, "die": _die, "key-error": _key_error,
                "clean": _clean, "vague": _vague, "accept": _accept}  # fmt: skip
    monkeypatch.setattr(fuzz_model_dirs, "TIMEOUT", 1.0)
    monkeypatch.setattr(fuzz_model_dirs, "TARGET_FUNCTIONS", controls)
    cases = [_case(tmp_path, name) for name in controls]
    fuzz_model_dirs.write_pickle(cases[0].path / "x.pkl", cases[0].marker, "exec")
    fuzz_model_dirs.run_cases(cases, _context(tmp_path), jobs=2)
    verdicts = {case.name: case.results[case.name] for case in cases}
    assert verdicts["unsafe-load"] == ("FAIL", "code executed: the payload wrote its marker file")
    assert verdicts["sleep"][0] == "FAIL" and verdicts["sleep"][1].startswith("hang")
    assert verdicts["die"][0] == "FAIL" and "died" in verdicts["die"][1]
    assert verdicts["key-error"][0] == "FAIL" and verdicts["key-error"][1].startswith("KeyError")
    assert verdicts["clean"] == ("clean error", f"ValueError: {cases[4].path / 'x.pkl'}: a pickle, refused")
    assert verdicts["vague"][0] == "FAIL" and "naming none" in verdicts["vague"][1]
    assert verdicts["accept"][0] == "FAIL" and verdicts["accept"][1].startswith("accepted")
    assert not any(case.marker.exists() for case in cases)  # cleared after each target


@pytest.mark.parametrize("how", ["exec", "exec-p4", "os.system", "torch-zip"])
def test_every_payload_runs_when_unpickled(tmp_path, how):
    """The payloads are real: loading them unsafely writes the marker (so a marker never seen means nothing ran)."""
    import torch

    marker = tmp_path / "marker"
    fuzz_model_dirs.write_pickle(tmp_path / "payload", marker, how)
    if how == "torch-zip":
        torch.load(tmp_path / "payload", weights_only=False)
    else:
        pickle.loads((tmp_path / "payload").read_bytes())
    assert marker.exists()

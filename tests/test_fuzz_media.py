"""A fast seeded subset of the media fuzz harness (`bench/fuzz_media.py`): ~40 odd or corrupt files through the
loaders, the processor, the corpus scan + `cache_features`, and (every 8th file) the pipeline and `avemotion predict`.

Pass: no exception but a `ValueError` naming the file, and every success decodes right where the truth is known.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import fuzz_media  # noqa: E402


def test_fuzzed_media_give_right_results_or_clean_errors():
    result = fuzz_media.fuzz(count=40, seed=1, fast=True, model_every=8)
    failures = "\n".join(f"{f['target']} {f['file']}: {f['detail']}" for f in result["failures"])
    assert not result["failures"], failures
    counts = result["counts"]["all"]
    assert result["files"] == 40
    assert counts["load"].get("ok", 0) >= 15 and counts["load"].get("clean error", 0) >= 5  # both paths exercised
    assert sum(counts["pipeline"].values()) == 5 and sum(counts["predict"].values()) == 5
    assert result["corpus"]["cache_features"] == "ok"
    # the scan's cheap probe never keeps a file the loader then rejects
    assert not any(line.startswith("probe accepts, load fails") for line in result["probe_vs_load_mismatches"])

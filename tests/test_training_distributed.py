"""Two CPU processes under `accelerate launch` train VAVL with examples/train_vavl.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
from training_testing import toy_dataset

from avemotion import VavlForEmotionRecognition

ROOT = Path(__file__).resolve().parents[1]
TINY = {"projection_dim": 8, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
        "conv_kernel_size": 5, "num_modality_layers": 1, "num_shared_layers": 1, "head_hidden_sizes": [24, 16]}  # fmt: skip


def test_two_cpu_processes_train_vavl(tmp_path):
    corpus = datasets.DatasetDict({"train": toy_dataset(32, 0, unpaired=0.25), "validation": toy_dataset(10, 1)})
    corpus.save_to_disk(str(tmp_path / "data"))
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(ROOT / "examples" / "train_vavl.py"), "--dataset", str(tmp_path / "data"),
        "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
        "--learning_rate", "3e-3", "--disable_tqdm", "--save_strategy", "epoch", "--config_overrides", json.dumps(TINY),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["num_processes"] == 2 and "MULTI_CPU" in results["distributed_type"]
    # 32 rows / (2 processes x 4 rows) = 4 updates per epoch
    assert results["global_step"] == 8
    assert results["eval"]["num_samples"] == 10  # gathered over both processes, duplicates removed
    assert set(results["eval"]) >= {"combined", "audio_visual", "audio", "visual"}
    model = VavlForEmotionRecognition.from_pretrained(tmp_path / "out")
    assert model.config.hidden_size == 32
    assert len(list((tmp_path / "out" / "checkpoints").iterdir())) == 2  # save_total_limit

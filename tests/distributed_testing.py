"""Helpers for the multi-process tests: a tiny VAVL model directory with backbones, and `accelerate launch`."""

import os
import subprocess
import sys
from pathlib import Path

from vavl_testing import tiny_efficientnet_config, tiny_vavl_config, tiny_wav2vec2_config

ROOT = Path(__file__).resolve().parents[1]


def save_backbone_model(directory: Path) -> Path:
    """A tiny `VavlForEmotionRecognition` with wav2vec2 and EfficientNet backbones and its processor (frames are
    already face crops: no detector), saved in `directory`."""
    from avemotion import VavlForEmotionRecognition
    from avemotion.processing import AvEmotionFeatureExtractor, AvEmotionImageProcessor, AvEmotionProcessor

    config = tiny_vavl_config(
        audio_backbone_config=tiny_wav2vec2_config(),
        visual_backbone_config=tiny_efficientnet_config(),
        visual_feature_dim=128,
        id2label=dict(enumerate(["angry", "sad", "disgust", "fear", "neutral", "happy"])),
        label2id={name: i for i, name in enumerate(["angry", "sad", "disgust", "fear", "neutral", "happy"])},
    )
    VavlForEmotionRecognition(config).eval().save_pretrained(directory)
    processor = AvEmotionProcessor(
        feature_extractor=AvEmotionFeatureExtractor(),
        image_processor=AvEmotionImageProcessor(face_detector=None, size={"height": 32, "width": 32}),
    )
    processor.save_pretrained(directory)
    return directory


def process_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a child process: offline, one thread (the cores are shared), its own datasets cache."""
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip


def launch(num_processes: int, *args: str, tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes N ARGS` on CPU processes (ARGS: a script, or `-m module ...`)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        *(["--multi_gpu"] if num_processes > 1 else []), *args,
    ]  # fmt: skip
    return subprocess.run(command, env=process_env(tmp_path), capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path)  # fmt: skip

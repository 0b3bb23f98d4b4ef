"""Quick start: build a small VAVL, save it, load it back with the Auto classes and predict with any modality missing.

Run with `make demo` (or `python examples/quickstart.py`). Everything is offline and takes a few seconds on a CPU.
"""

from __future__ import annotations

import tempfile

import torch
from transformers import AutoConfig, AutoModel

import avemotion  # noqa: F401  (registers the models with transformers' Auto classes)
from avemotion import AutoModelForEmotionRecognition, VavlConfig, VavlForEmotionRecognition


def main() -> None:
    torch.manual_seed(0)
    # The CREMA-D set-up (6 emotions, VAVL's order) on pre-extracted features, with smaller Conformers.
    config = VavlConfig.from_preset(
        "crema-d",
        audio_backbone_config=None,
        visual_backbone_config=None,
        hidden_size=128,
        intermediate_size=256,
        num_attention_heads=4,
    )
    model = VavlForEmotionRecognition(config)
    print(
        f"VAVL ({config.problem_type}, labels {list(config.id2label.values())}): "
        f"{sum(p.numel() for p in model.parameters()):,} parameters"
    )

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        print(f"saved to {directory}; auto_map: {sorted(AutoConfig.from_pretrained(directory).auto_map)}")
        model = AutoModelForEmotionRecognition.from_pretrained(directory).eval()
        encoder = AutoModel.from_pretrained(directory).eval()
        print(f"loaded {type(model).__name__} and {type(encoder).__name__} with the Auto classes")

    # Two clips of different lengths: wav2vec2-like audio frames (50 Hz) and per-frame face features (30 fps).
    audio = torch.zeros(2, 150, config.audio_feature_dim)
    audio_mask = torch.zeros(2, 150, dtype=torch.long)
    video = torch.zeros(2, 90, config.visual_feature_dim)
    video_mask = torch.zeros(2, 90, dtype=torch.long)
    for row, seconds in enumerate((3.0, 2.0)):
        audio[row, : int(50 * seconds)] = torch.randn(int(50 * seconds), config.audio_feature_dim)
        audio_mask[row, : int(50 * seconds)] = 1
        video[row, : int(30 * seconds)] = torch.randn(int(30 * seconds), config.visual_feature_dim)
        video_mask[row, : int(30 * seconds)] = 1

    inputs = {
        "audio + video": dict(
            audio_features=audio,
            audio_features_mask=audio_mask,
            visual_features=video,
            visual_features_mask=video_mask,
        ),
        "audio only": dict(audio_features=audio, audio_features_mask=audio_mask),
        "video only": dict(visual_features=video, visual_features_mask=video_mask),
    }
    print(f"\n{'modalities':<14} {'clip':<5} {'prediction':<10} {'score':>6}   (random weights: scores are arbitrary)")
    with torch.no_grad():
        for name, kwargs in inputs.items():
            probabilities = model(**kwargs).logits.softmax(-1)
            for row, (score, index) in enumerate(zip(*probabilities.max(-1))):
                print(f"{name:<14} {row:<5} {config.id2label[int(index)]:<10} {float(score):>6.3f}")


if __name__ == "__main__":
    main()

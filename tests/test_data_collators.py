"""AvEmotionCollator: padding, masks, missing modalities, labels; and its batches run through a tiny VAVL."""

import numpy as np
import pytest
import torch
from vavl_testing import AUDIO_DIM, VISUAL_DIM, tiny_vavl_config

from avemotion import VavlForEmotionRecognition
from avemotion.data.collators import AvEmotionCollator


def test_pads_every_modality_with_masks_and_zero_rows_for_missing():
    rows = [
        {"input_values": np.ones(5), "visual_features": np.ones((2, 3)), "label": 1},
        {"input_values": np.ones(3), "visual_features": None, "label": 0},
        {"input_values": None, "visual_features": np.ones((4, 3)), "label": 2},
    ]
    batch = AvEmotionCollator()(rows)
    assert batch["input_values"].shape == (3, 5) and batch["visual_features"].shape == (3, 4, 3)
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0], [0] * 5]
    assert batch["visual_features_mask"].tolist() == [[1, 1, 0, 0], [0] * 4, [1] * 4]
    assert batch["visual_features"][0, 2:].abs().sum() == 0 and batch["input_values"][2].abs().sum() == 0
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0, 2]
    assert "audio_features" not in batch and "pixel_values_videos" not in batch


def test_attribute_labels_pixels_and_errors():
    rows = [
        {"pixel_values_videos": np.zeros((2, 3, 8, 8)), "arousal": 1.0, "valence": 2.0, "id": "a"},
        {"pixel_values_videos": np.zeros((1, 3, 8, 8)), "arousal": 3.0, "valence": 4.0, "id": "b"},
    ]
    batch = AvEmotionCollator(label_column=["arousal", "valence"], keep_columns=("id",), pad_to_multiple_of=4)(rows)
    assert batch["pixel_values_videos"].shape == (2, 4, 3, 8, 8) and batch["visual_features_mask"].sum() == 3
    assert batch["labels"].tolist() == [[1.0, 2.0], [3.0, 4.0]] and batch["id"] == ["a", "b"]
    with pytest.raises(ValueError, match="no value for label"):
        AvEmotionCollator(label_column=["arousal"])([{"audio_features": np.ones((2, 3)), "arousal": None}])
    with pytest.raises(ValueError, match="expected \\(length"):
        AvEmotionCollator(label_column=None)(
            [{"audio_features": np.ones((2, 3))}, {"audio_features": np.ones((2, 4))}]
        )


def test_collated_batch_matches_single_rows_in_vavl():
    model = VavlForEmotionRecognition(tiny_vavl_config()).eval()
    rng = np.random.default_rng(0)
    rows = [
        {
            "audio_features": rng.normal(size=(6, AUDIO_DIM)),
            "visual_features": rng.normal(size=(3, VISUAL_DIM)),
            "label": 0,
        },
        {"audio_features": rng.normal(size=(4, AUDIO_DIM)), "visual_features": None, "label": 1},
        {"audio_features": None, "visual_features": rng.normal(size=(5, VISUAL_DIM)), "label": 2},
    ]
    collate = AvEmotionCollator()
    with torch.no_grad():
        batched = model(**collate(rows))
        for index, row in enumerate(rows):
            single = collate([row])
            single_out = model(**single)
            torch.testing.assert_close(batched.logits[index], single_out.logits[0], atol=1e-5, rtol=1e-4)

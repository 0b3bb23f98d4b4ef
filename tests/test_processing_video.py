"""Video decoding, face detection/tracking, VAVL's crop and the frame processor, on a real face photo."""

import cv2
import numpy as np
import pytest
import torch
from media_testing import astronaut_face, face_frames, write_video
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from avemotion import AvEmotionImageProcessor
from avemotion.processing import FaceDetector, HaarCascadeFaceDetector, load_video
from avemotion.processing.faces import box_iou, crop_square, track_main_face, vavl_crop_square

NUM_FRAMES, FPS, MISSING = 30, 25, (10, 11, 12)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames, squares = face_frames(NUM_FRAMES, without_face=MISSING)
    path = write_video(tmp_path_factory.mktemp("video") / "face.mp4", frames, fps=FPS)
    return path, frames, squares


@pytest.fixture(scope="module")
def haar():
    return HaarCascadeFaceDetector(max_side=None)


class CountingDetector:
    def __init__(self, detector):
        self.detector, self.calls = detector, 0

    def detect(self, frame_rgb):
        self.calls += 1
        return self.detector.detect(frame_rgb)


def as_uint8_crops(pixel_values: np.ndarray) -> np.ndarray:
    """(T, 3, H, W) float in [0, 255] (no rescale/normalise) -> (T, H, W, 3) uint8."""
    return np.rint(pixel_values.transpose(0, 2, 3, 1)).astype(np.uint8)


def test_decoding_at_native_rate_target_fps_and_max_frames(clip):
    path, frames, _ = clip
    native = load_video(path)
    assert native.frames.shape == frames.shape and native.fps == FPS
    np.testing.assert_allclose(native.timestamps, np.arange(NUM_FRAMES) / FPS, atol=1e-6)
    assert np.abs(native.frames.astype(int) - frames).mean() < 3  # H.264 is lossy
    sampled = load_video(path, fps=10)
    assert len(sampled.frames) == 12 and sampled.fps == 10  # 1.2 s at 10 fps
    assert np.all(np.diff(sampled.timestamps) >= 0.08 - 1e-6)
    assert len(load_video(path, max_frames=7).frames) == 7


def test_crop_follows_vavl_rule():
    centre_x, centre_y, side = vavl_crop_square(np.array([100, 50, 180, 150], dtype=np.float32))
    assert (centre_x, centre_y, side) == (140, 100, int(1.25 * 1.1 * (80 + 100) / 2))
    frame = np.arange(200 * 300 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8)
    crop = crop_square(frame, 140, 100, 60, (60, 60), interpolation=0)
    np.testing.assert_array_equal(crop, frame[70:130, 110:170])
    edge = crop_square(frame, 10, 10, 40, (40, 40), interpolation=0)  # outside the frame: black, like VAVL
    assert np.all(edge[:10, :] == 0) and np.all(edge[:, :10] == 0)
    np.testing.assert_array_equal(edge[10:, 10:], frame[:30, :30])


def test_face_crops_contain_the_face_and_faceless_frames_are_masked(clip, haar):
    path, _, squares = clip
    processor = AvEmotionImageProcessor(do_rescale=False, do_normalize=False)
    out = processor(path, return_tensors="np")
    assert out["pixel_values_videos"].shape == (1, NUM_FRAMES, 3, 224, 224)
    expected_mask = np.ones(NUM_FRAMES, dtype=np.int64)
    expected_mask[list(MISSING)] = 0
    np.testing.assert_array_equal(out["visual_features_mask"][0], expected_mask)
    assert out["num_frames_without_face"].tolist() == [len(MISSING)]
    crops = as_uint8_crops(out["pixel_values_videos"][0])
    assert np.all(crops[list(MISSING)] == 0)
    for t in range(0, NUM_FRAMES, 4):
        if t in MISSING:
            continue
        boxes = haar.detect(crops[t])
        assert len(boxes) == 1, f"frame {t}: {boxes}"
        x0, y0, x1, y1 = boxes[0]
        # the face fills most of the crop and sits in its middle (VAVL crops 1.375x the face size)
        assert (x1 - x0) / 224 > 0.55 and (y1 - y0) / 224 > 0.55
        # VAVL's square is centred on the 68-landmark extent (brows to chin), which MTCNN's landmarks give: below
        # the centre of the Haar box, which takes in the forehead (about 30 px here)
        assert abs((x0 + x1) / 2 - 112) < 20 and -10 < 112 - (y0 + y1) / 2 < 40


def test_tracking_between_key_frames_matches_per_frame_detection(clip, haar):
    _, frames, _ = clip
    every_frame = CountingDetector(haar)
    strided = CountingDetector(haar)
    reference = track_main_face(frames, every_frame, detect_every=1)
    tracked = track_main_face(frames, strided, detect_every=5)
    # key frames 0, 5, ..., 25 and the last one (29); key frame 10 has no face, so 6-9 and 11-14 are detected too
    assert every_frame.calls == NUM_FRAMES and strided.calls == 7 + 8
    for t, (ref, box) in enumerate(zip(reference, tracked)):
        assert (ref is None) == (box is None), f"frame {t}"
        if ref is not None:
            assert box_iou(ref, box[None])[0] > 0.75, f"frame {t}"


def test_main_face_is_the_largest_and_all_keeps_every_face():
    small, large = astronaut_face(100), astronaut_face(160)
    frames = np.full((4, 240, 400, 3), 120, dtype=np.uint8)
    frames[:, 10:110, 10:110] = small
    frames[:, 60:220, 220:380] = large
    processor = AvEmotionImageProcessor(do_rescale=False, do_normalize=False)
    main = processor(frames)
    assert main["pixel_values_videos"].shape[1] == 4
    found = processor.get_face_detector().detect_faces(frames[:1])[0]
    assert len(found.boxes) == 2
    large = np.argmax(found.boxes[:, 2] - found.boxes[:, 0])
    assert found.boxes[large][0] > 200  # the large face is on the right
    # the main-face crop is the crop of the large face (VAVL's square from its landmarks)
    centre_x, centre_y, side = vavl_crop_square(found.boxes[large], landmarks=found.landmarks[large])
    expected = crop_square(frames[0], centre_x, centre_y, side, (224, 224), interpolation=cv2.INTER_CUBIC)
    assert np.abs(as_uint8_crops(main["pixel_values_videos"][0])[0].astype(int) - expected).max() <= 1
    every = AvEmotionImageProcessor(face_selection="all")(frames)
    assert every["pixel_values_videos"].shape[1] == 8 and every["visual_features_mask"].sum() == 8


def test_imagenet_normalisation_and_pre_cropped_faces():
    frames = np.zeros((3, 100, 80, 3), dtype=np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 200, 100, 50
    out = AvEmotionImageProcessor(face_detector=None)(frames, return_tensors="pt")
    pixels = out["pixel_values_videos"]
    assert tuple(pixels.shape) == (1, 3, 3, 224, 224) and out["visual_features_mask"].tolist() == [[1, 1, 1]]
    expected = (np.array([200, 100, 50]) / 255 - np.array(IMAGENET_DEFAULT_MEAN)) / np.array(IMAGENET_DEFAULT_STD)
    np.testing.assert_allclose(pixels[0, 0].mean(dim=(1, 2)).numpy(), expected, rtol=1e-5)


def test_custom_detector_and_batch_padding():
    class FixedBox:
        def detect(self, frame_rgb):
            return np.array([[10, 10, 40, 50]], dtype=np.float32)

    assert isinstance(FixedBox(), FaceDetector)
    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    processor = AvEmotionImageProcessor(face_detector=FixedBox(), size={"height": 32, "width": 32})
    out = processor([frames, frames[:2]], return_tensors="np")
    assert out["pixel_values_videos"].shape == (2, 5, 3, 32, 32)
    np.testing.assert_array_equal(out["visual_features_mask"], [[1] * 5, [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(out["pixel_values_videos"][1, :2], out["pixel_values_videos"][0, :2])
    assert np.all(out["pixel_values_videos"][1, 2:] == 0)
    assert processor.to_dict()["face_detector"].startswith("custom:")


def test_video_without_any_face_is_an_error(tmp_path):
    frames = np.full((6, 120, 160, 3), 90, dtype=np.uint8)
    path = write_video(tmp_path / "empty_room.mp4", frames, fps=6)
    with pytest.raises(ValueError, match="empty_room.mp4.*no face found in any of its 6 frames"):
        AvEmotionImageProcessor()(path)


def test_bad_video_inputs_raise_value_errors(tmp_path, clip):
    path, frames, _ = clip
    truncated = tmp_path / "truncated.mp4"
    faststart = write_video(tmp_path / "faststart.mp4", frames, fps=FPS, faststart=True)
    truncated.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    cut_index = tmp_path / "cut_index.mp4"  # moov atom (the index) at the end is lost
    cut_index.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    processor = AvEmotionImageProcessor()
    for bad, message in [(truncated, "truncated"), (cut_index, "cannot decode"), (empty, "empty")]:
        with pytest.raises(ValueError, match=message) as error:
            processor(bad)
        assert bad.name in str(error.value)
    for array, message in [
        (frames.astype(np.float32), "uint8"),
        (frames[0], r"one image of shape \(\d+, \d+, 3\), not a video"),
        (frames[..., :2], r"\(frames, height, width, 3\)"),
        (frames[:0], "empty"),
        (42, "expected a file path"),
    ]:
        with pytest.raises(ValueError, match=message):
            processor(array)


def test_grayscale_and_rgba_frames_are_converted_to_rgb():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(3, 40, 48), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full((3, 40, 48, 1), 7, np.uint8)], axis=-1)
    processor = AvEmotionImageProcessor(face_detector=None, size={"height": 32, "width": 32})
    expected = processor(rgb, return_tensors="np")["pixel_values_videos"]
    for video in (gray, gray[..., None], rgba, list(gray), list(rgba)):
        np.testing.assert_array_equal(processor(video, return_tensors="np")["pixel_values_videos"], expected)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"video_fps": -1}, "video_fps: fps must be a positive number"),
        ({"video_fps": 0}, "video_fps: fps must be a positive number"),
        ({"video_fps": float("nan")}, "video_fps: fps must be a positive number"),
        ({"max_frames": 0}, r"max_frames must be a whole number >= 1"),
        ({"max_frames": -1}, r"max_frames must be a whole number >= 1"),
        ({"max_frames": 1.5}, r"max_frames must be a whole number >= 1"),
        ({"size": {"height": 0, "width": 0}}, "size must give a height and a width of at least 1 pixel"),
    ],
)
def test_bad_frame_settings_are_value_errors(clip, settings, message):
    """Issue 10 item 14: fps=-1 (StopIteration in the pipeline), max_frames=0 and size 0x0 (errors from NumPy and
    OpenCV), max_frames=-1 (silently one frame less)."""
    path, frames, _ = clip
    with pytest.raises(ValueError, match=message):
        AvEmotionImageProcessor(**settings)
    processor = AvEmotionImageProcessor(face_detector=None)
    for video in (path, frames[:2]):
        with pytest.raises(ValueError, match=message):
            processor(video, **settings)


def test_load_video_names_the_file_for_bad_arguments(clip):
    path, _, _ = clip
    for kwargs, message in [({"fps": -1}, "fps must be"), ({"max_frames": 0}, "max_frames must be")]:
        with pytest.raises(ValueError, match=message) as error:
            load_video(path, **kwargs)
        assert str(path) in str(error.value)


def test_avi_with_dropped_frames_is_not_called_truncated(tmp_path):
    """AVI has no timestamps: a dropped frame is an empty index entry counted in the stream's frame count."""
    import av

    from avemotion.processing.media import probe_video

    path = tmp_path / "dropped.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for index, pts in enumerate([0, 1, 4, 5, 8, 9]):  # frames 2-3 and 6-7 dropped
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 30 * index, np.uint8), format="rgb24")
            frame.pts = pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    probe_video(path)
    clip = load_video(path)
    assert len(clip.frames) == 6
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.1, 0.4, 0.5, 0.8, 0.9], atol=1e-6)


def test_haar_on_an_opencv_without_cascades_is_a_clear_error(monkeypatch):
    """OpenCV 5 has no `cv2.CascadeClassifier`: the Haar detector names the version and the alternatives instead of
    failing with an AttributeError."""
    import cv2

    monkeypatch.delattr(cv2, "CascadeClassifier")
    monkeypatch.setattr(cv2, "__version__", "5.0.0")
    with pytest.raises(ValueError, match=r"OpenCV 5\.0\.0 does not have.*opencv-python-headless<5.*FaceDetector"):
        HaarCascadeFaceDetector()


def test_haar_with_a_missing_cascade_file_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"Cannot load the Haar cascade .*nothing\.xml"):
        HaarCascadeFaceDetector(cascade=str(tmp_path / "nothing.xml"))


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_normalisation_gives_the_numpy_expressions_values(rescale, normalize):
    # the in-place torch passes must give exactly the values of the straightforward NumPy expression
    crops = np.random.default_rng(0).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    settings = {"do_rescale": rescale, "rescale_factor": 1 / 255, "do_normalize": normalize,
                "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}  # fmt: skip
    expected = crops.astype(np.float32)
    if rescale:
        expected *= np.float32(1 / 255)
    if normalize:
        expected = (expected - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.25, 0.3])
    pixels = AvEmotionImageProcessor._normalize(crops, settings)
    assert pixels.shape == (5, 3, 7, 9) and pixels.dtype == np.float32 and pixels.flags.c_contiguous
    np.testing.assert_array_equal(pixels, expected.transpose(0, 3, 1, 2))


def test_uint8_face_crops_normalised_later_equal_the_pixel_values(clip):
    # the pipeline moves uint8 crops and normalises them where the model runs: the same values as `preprocess`
    processor = AvEmotionImageProcessor(max_frames=12)
    frames = np.random.default_rng(1).integers(0, 256, (3, 40, 30, 3), dtype=np.uint8)
    path = str(clip[0])
    for videos in ([path], [path, frames]):
        kwargs = {"face_detector": None} if len(videos) == 2 else {}
        expected = processor(videos, return_tensors="pt", **kwargs)
        crops = processor.face_crops(videos, return_tensors="pt", **kwargs)
        assert crops["face_crops"].dtype == torch.uint8
        assert crops["face_crops"].shape == expected["pixel_values_videos"].shape
        torch.testing.assert_close(crops["visual_features_mask"], expected["visual_features_mask"], rtol=0, atol=0)
        pixels = processor.normalize_crops(crops["face_crops"])
        mask = expected["visual_features_mask"].bool()  # padding rows are zeros in the float pixels only
        torch.testing.assert_close(pixels[mask], expected["pixel_values_videos"][mask], rtol=0, atol=0)
    custom = processor.normalize_crops(crops["face_crops"], image_mean=[0.0] * 3, image_std=[1.0] * 3)
    torch.testing.assert_close(custom, crops["face_crops"].float() / 255, rtol=1e-6, atol=1e-7)


def test_output_keys_follow_model_input_names_and_are_saved(tmp_path):
    """A processor for another model emits that model's declared video keys, and keeps them when saved."""
    frames = [np.full((3, 32, 32, 3), 128, np.uint8), np.full((2, 32, 32, 3), 64, np.uint8)]
    processor = AvEmotionImageProcessor(model_input_names=["frames", "frames_mask"], face_detector=None)
    out = processor(frames, return_tensors="pt")
    assert set(out) == {"frames", "frames_mask", "num_frames_without_face"}
    assert out["frames"].shape == (2, 3, 3, 224, 224) and out["frames_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert set(processor.face_crops(frames, return_tensors="pt")) == {
        "face_crops",
        "frames_mask",
        "num_frames_without_face",
    }
    processor.save_pretrained(tmp_path)
    assert AvEmotionImageProcessor.from_pretrained(tmp_path).model_input_names == ["frames", "frames_mask"]
    default = AvEmotionImageProcessor(face_detector=None)(frames, return_tensors="pt")
    assert {"pixel_values_videos", "visual_features_mask"} <= set(default)
    torch.testing.assert_close(default["pixel_values_videos"], out["frames"], rtol=0, atol=0)

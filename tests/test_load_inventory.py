"""Every place in the package that deserialises data a user may have been given, read from its source with `ast`
(as tests/test_structure.py reads the layout), against an explicit INVENTORY: what the data is, why it cannot run
code, and the tests that plant a payload (or a crafted file) for it.

A new call site fails `test_every_loading_call_is_in_the_inventory` until it is added with a test that plants a
payload; a removed or moved one fails `test_no_inventory_entry_is_stale`; a test that does not exist, or an entry
whose test is still to be written (`None`), fails `test_every_entry_names_existing_payload_tests`.

What counts as a loading call (`LOADERS`): `torch.load`, `numpy.load`/`fromfile`, `pickle.load`/`loads`/`Unpickler`,
`json.load`/`loads`, `safetensors` `safe_open`/`load_file`/`load`, `onnxruntime.InferenceSession`, `onnx.load*`,
accelerate's `load_state`, `restricted_load` and the package's other unpicklers (`RestrictedUnpickler`,
`timm_pickle`'s `_ModuleUnpickler`, `load_pickled_module`), `yaml.*load`, `marshal`, `shelve`, `cv2.CascadeClassifier`,
`cv2.dnn.readNet*`, `cv2.FaceDetectorYN`, `datasets.load_from_disk`/`load_dataset`, transformers' readers of a
directory (`from_pretrained`, `get_*_dict`, `from_json_file`), and `eval`/`exec`/`compile`/`__import__`. Names are
resolved through each module's imports (`from safetensors.torch import load_file` -> `safetensors.torch.load_file`).
A call through a variable (`loader = torch.load; loader(path)`) is not seen: don't write one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "avemotion"
TESTS = ROOT / "tests"

EXACT = {
    "torch.load", "torch.jit.load", "numpy.load", "numpy.fromfile", "numpy.memmap", "pickle.load", "pickle.loads",
    "pickle.Unpickler", "pickle._Unpickler", "json.load", "json.loads", "safetensors.safe_open",
    "safetensors.torch.load_file", "safetensors.torch.load", "safetensors.numpy.load_file", "safetensors.numpy.load",
    "onnxruntime.InferenceSession", "onnx.load", "onnx.load_model", "onnx.load_model_from_string",
    "onnx.load_from_string", "onnx.load_tensor", "onnx.external_data_helper.load_external_data_for_model",
    "yaml.load", "yaml.safe_load", "yaml.unsafe_load", "yaml.full_load", "marshal.load", "marshal.loads",
    "shelve.open", "cv2.CascadeClassifier", "cv2.FaceDetectorYN.create", "cv2.FaceDetectorYN_create",
    "datasets.load_from_disk", "datasets.load_dataset", "eval", "exec", "compile", "__import__",
}  # fmt: skip
# the last part of the called name is enough (methods of whatever class, the package's own unpicklers)
LAST = {
    "load_state", "restricted_load", "RestrictedUnpickler", "_ModuleUnpickler", "load_pickled_module",
    "from_pretrained", "get_processor_dict", "get_feature_extractor_dict", "get_image_processor_dict",
    "get_config_dict", "from_json_file",
}  # fmt: skip
PREFIXES = ("cv2.dnn.read",)

# why each kind of data cannot run code
KINDS = {
    "json": "json.loads builds only dicts, lists, strings, numbers, booleans and None; nothing is called or imported",
    "safetensors": "a JSON header and raw tensor bytes; the reader checks offsets, dtypes and shapes against the "
    "file and builds tensors only (no pickle)",
    "weights-only torch": "torch.load(weights_only=True): torch's unpickler allows only tensors, containers and "
    "numbers; any other global is refused before it is resolved",
    "restricted pickle": "avemotion.utils.safe_pickle: an explicit allow-list of (module, name) pairs, no dotted "
    "names, no whole modules; anything else is refused before it is resolved",
    "timm pickle": "timm_pickle's restricted unpickler: module records and tensors only; no class named by the file "
    "is imported or constructed",
    "onnx graph": "a protobuf graph of standard operators (no custom op library is registered); its external data "
    "must be plain files inside the directory (checked before ONNX Runtime opens the graph)",
    "transformers loader": "transformers reads JSON configs and safetensors (torch files with weights_only=True); "
    "remote code (auto_map) runs only with trust_remote_code=True, which the package never passes; avemotion "
    "configs are validated before any module is built and weight indexes are checked to stay in the directory",
    "arrow dataset": "datasets.load_from_disk reads JSON metadata and Arrow IPC buffers (columns of values); nothing "
    "is unpickled",
    "opencv cascade": "an XML file of a Haar cascade, only from cv2.data.haarcascades (a processor setting naming a "
    "path or a class is refused)",
    "internal": "bytes that the package's own forked pipeline workers and their parent pass each other through a "
    "private pipe; nothing read from a file or from another process",
}

# tests that plant a payload or a crafted file for a call site
FUZZ = "test_fuzz_model_dirs.py::test_fuzzed_model_directories_give_clean_errors"
CONFIG_FILE = "test_config_limits.py::test_from_pretrained_of_a_crafted_directory_fails_fast"
SHARD_NAME = "test_directory_containment.py::test_a_crafted_shard_name_is_refused_before_any_weight_is_read"
INDEX_SHAPE = "test_directory_containment.py::test_a_weight_index_of_the_wrong_shape_is_refused"
AUTO_MAP = "test_directory_containment.py::test_auto_map_entries_run_nothing_without_trust_remote_code"
PROCESSOR_CLASS = "test_directory_containment.py::test_an_unknown_processor_class_runs_nothing"
FACE_DETECTOR = "test_directory_containment.py::test_a_face_detector_setting_naming_a_file_or_class_is_refused"
TOKENIZER = "test_directory_containment.py::test_a_tokenizer_setting_naming_a_file_outside_is_refused"
GRAPH_FILE = "test_directory_containment.py::test_a_crafted_graph_file_is_refused_and_nothing_outside_is_opened"
EXTERNAL_DATA = "test_directory_containment.py::test_external_data_of_a_graph_must_stay_in_its_directory"
ONNX_CONFIG = "test_directory_containment.py::test_onnx_config_is_validated_as_data"
RE_EXPORT = "test_directory_containment.py::test_re_export_reads_the_existing_onnx_config_as_data"
RESUME_PICKLE = "test_resume_security.py::test_a_planted_pickle_never_runs_and_the_resume_is_refused_naming_it"
RESUME_STATE = "test_resume_security.py::test_a_state_that_cannot_be_restored_stops_the_resume_naming_the_file"
TRAINER_STATE = "test_resume_security.py::test_a_trainer_state_out_of_range_is_named"
TRUNCATED_CHECKPOINT = "test_training_faults.py::test_resume_skips_a_truncated_checkpoint"
TRUNCATED_WEIGHTS = "test_training_faults.py::test_truncated_weights_name_the_file"
PREDICT_MODEL = "test_cli.py::test_predict_unusable_model_is_one_error_line"
PUSH_TRUNCATED = "test_training_hub.py::test_push_of_a_truncated_model_is_one_error_line"
TIMM_PAYLOAD = "test_hsemotion_conversion.py::test_torch_saved_pickles_that_run_code_are_refused"
TIMM_GLOBALS = "test_hsemotion_conversion.py::test_crafted_globals_are_refused_before_anything_runs"
VAVL_STATE_DICT = "test_vavl_conversion.py::test_crafted_state_dict_is_refused_by_torch_weights_only"
VAVL_STATS = "test_vavl_conversion.py::test_crafted_normalisation_pickle_fails_cleanly_in_the_cli"
SAFE_PICKLE = "test_safe_pickle.py::test_classic_os_system_reduce_is_refused"
SAFE_PICKLE_EVAL = "test_safe_pickle.py::test_dotted_name_through_numpy_dtypes_to_eval_is_refused"
TRAINING_LOG = "test_plotting.py::test_training_curves_from_the_log_file"
CONFIG_OVERRIDES = "test_training_cli.py::test_model_arguments_are_checked"
WORKER_WINDOWS = "test_pipeline_workers.py::test_namedtuples_and_tuple_subclasses_in_windows"
WORKER_ITEMS = "test_pipeline_workers.py::test_an_unpicklable_stream_item_is_raised_in_its_turn_and_ends_the_pull"
WORKER_ERRORS = "test_pipeline_workers.py::test_an_unexpected_worker_exception_names_the_input"
PAYLOAD_BACKBONE_PICKLE = "test_load_payloads.py::test_pickled_backbone_weights_never_run"
PAYLOAD_BACKBONE_AUTO_MAP = "test_load_payloads.py::test_backbone_auto_map_is_not_imported"
PAYLOAD_BACKBONE_UNKNOWN = "test_load_payloads.py::test_backbone_of_an_unknown_type_with_auto_map_is_refused"
PAYLOAD_CONVERT_CONFIG = "test_load_payloads.py::test_convert_vavl_audio_backbone_config_is_read_as_json"
PAYLOAD_CONVERT_AUTO_MAP = "test_load_payloads.py::test_convert_vavl_audio_backbone_config_auto_map_is_not_imported"
PAYLOAD_SUB_FE = "test_load_payloads.py::test_sub_processor_feature_extractor_file_is_checked"
PAYLOAD_SUB_FE_AUTO_MAP = "test_load_payloads.py::test_sub_processor_feature_extractor_auto_map_is_not_imported"
PAYLOAD_PROC_BACKBONES = "test_load_payloads.py::test_processor_from_backbones_with_a_crafted_audio_settings_file"
PAYLOAD_PROC_BACKBONES_AUTO_MAP = (
    "test_load_payloads.py::test_processor_from_backbones_ignores_auto_map_and_class_names"
)
PAYLOAD_IMAGE_BACKBONE = "test_load_payloads.py::test_image_processor_from_backbone_with_a_crafted_settings_file"
PAYLOAD_IMAGE_BACKBONE_AUTO_MAP = "test_load_payloads.py::test_image_processor_from_backbone_ignores_auto_map"
PAYLOAD_DATASET_PICKLE = "test_load_payloads.py::test_a_planted_pickle_in_a_saved_dataset_is_never_read"
PAYLOAD_DATASET_STATE = "test_load_payloads.py::test_a_crafted_dataset_state_runs_nothing"
PAYLOAD_EVALUATE_DATASET = "test_load_payloads.py::test_evaluate_reads_a_crafted_dataset_without_running_anything"
PAYLOAD_CORPUS_METADATA = "test_load_payloads.py::test_corpus_metadata_of_a_crafted_description"
PAYLOAD_PUSH_METRICS = "test_load_payloads.py::test_push_metrics_file_is_read_as_json"
PAYLOAD_PROCESSOR_AUTO_MAP = "test_load_payloads.py::test_processor_auto_map_is_not_imported"
PAYLOAD_PROCESSOR_CLASS = "test_load_payloads.py::test_an_unknown_processor_class_with_auto_map_is_not_imported"
PAYLOAD_FE_TYPE = "test_load_payloads.py::test_an_unknown_feature_extractor_type_with_auto_map_is_not_imported"
PAYLOAD_PREPROCESSOR_JSON = "test_load_payloads.py::test_a_crafted_preprocessor_config_runs_nothing"
FACE_WEIGHTS_PAYLOAD = "test_face_weights.py::test_a_member_that_runs_code_is_refused_and_nothing_runs"
FACE_WEIGHTS_TAMPERED = "test_face_weights.py::test_a_tampered_member_is_refused_naming_it"
FACE_WEIGHTS_SHAPES = "test_face_weights.py::test_a_member_with_wrong_shapes_is_refused_naming_member_and_key"
FACE_WEIGHTS_DISTRIBUTION = "test_face_weights.py::test_an_installed_distribution_is_found_without_importing_it"
FACE_WEIGHTS_BAD = "test_face_weights.py::test_bad_weights_are_refused_naming_the_key"
FACE_WEIGHTS_CACHE = "test_face_weights.py::test_a_good_cache_file_is_kept_and_force_rewrites_it"
PAYLOAD_SANITIZE = "test_load_payloads.py::test_sanitize_saved_configs_of_a_crafted_file"
PAYLOAD_SANITIZE_AUTO_MAP = "test_load_payloads.py::test_sanitize_saved_configs_leaves_auto_map_and_dunders_as_data"

# (module under avemotion., enclosing function, called name, kind, tests; None: no payload test yet) - one per line
# fmt: off
INVENTORY: list[tuple[str, str, str, str, tuple[str, ...] | None]] = [
    ("models.hsemotion.convert_hsemotion_checkpoint", "convert_hsemotion_checkpoint", "load_pickled_module", "timm pickle", (TIMM_PAYLOAD,)),  # noqa: E501
    ("models.hsemotion.timm_pickle", "load_pickled_module", "_ModuleUnpickler", "timm pickle", (TIMM_PAYLOAD, TIMM_GLOBALS)),  # noqa: E501
    ("models.loading_checks", "ContainedWeightsMixin.from_pretrained", "super().from_pretrained", "transformers loader", (SHARD_NAME, AUTO_MAP, FUZZ)),  # noqa: E501
    ("models.loading_checks", "check_weight_formats", "safetensors.safe_open", "safetensors", ("test_loading_errors.py::test_a_broken_safetensors_file_is_refused_naming_it", "test_loading_errors.py::test_pickled_weights_are_refused_without_unpickling", FUZZ)),  # noqa: E501
    ("models.loading_checks", "_read_index", "json.loads", "json", (INDEX_SHAPE, FUZZ)),
    ("models.mlfusion.modeling_mlfusion", "MultiLevelFusionPreTrainedModel.from_backbones", "transformers.AutoModel.from_pretrained", "transformers loader", (PAYLOAD_BACKBONE_PICKLE, PAYLOAD_BACKBONE_AUTO_MAP, PAYLOAD_BACKBONE_UNKNOWN,)),  # noqa: E501
    ("models.mlfusion.modeling_mlfusion", "MultiLevelFusionPreTrainedModel.from_pretrained", "super().from_pretrained", "transformers loader", (CONFIG_FILE, FUZZ)),  # noqa: E501
    ("models.onnx_export", "_load_model", "avemotion.models.auto.AutoModelForEmotionRecognition.from_pretrained", "transformers loader", (FUZZ,)),  # noqa: E501
    ("models.onnx_export", "check_parity", "avemotion.models.onnx_runtime.OnnxRuntimeEmotionModel.from_pretrained", "onnx graph", (RE_EXPORT,)),  # noqa: E501
    ("models.onnx_runtime", "OnnxRuntimeEmotionModel.from_pretrained", "onnxruntime.InferenceSession", "onnx graph", (GRAPH_FILE, EXTERNAL_DATA, FUZZ)),  # noqa: E501
    ("models.onnx_runtime", "OnnxRuntimeEmotionModel.from_pretrained", "transformers.AutoConfig.from_pretrained", "transformers loader", (FUZZ,)),  # noqa: E501
    ("models.onnx_runtime", "check_external_data", "onnx.load", "onnx graph", (EXTERNAL_DATA, FUZZ)),
    ("models.onnx_runtime", "read_onnx_config", "json.loads", "json", (ONNX_CONFIG, FUZZ)),
    ("models.vavl.convert_vavl_original_checkpoint", "_load_state_dict", "torch.load", "weights-only torch", (VAVL_STATE_DICT,)),  # noqa: E501
    ("models.vavl.convert_vavl_original_checkpoint", "load_normalization_stats", "avemotion.utils.safe_pickle.restricted_load", "restricted pickle", (VAVL_STATS,)),  # noqa: E501
    ("models.vavl.modeling_vavl", "VavlPreTrainedModel.from_backbones", "transformers.EfficientNetModel.from_pretrained", "transformers loader", (PAYLOAD_BACKBONE_PICKLE, PAYLOAD_BACKBONE_AUTO_MAP,)),  # noqa: E501
    ("models.vavl.modeling_vavl", "VavlPreTrainedModel.from_backbones", "transformers.Wav2Vec2Model.from_pretrained", "transformers loader", (PAYLOAD_BACKBONE_PICKLE, PAYLOAD_BACKBONE_AUTO_MAP,)),  # noqa: E501
    ("models.vavl.modeling_vavl", "VavlPreTrainedModel.from_pretrained", "super().from_pretrained", "transformers loader", (CONFIG_FILE, AUTO_MAP, FUZZ)),  # noqa: E501
    ("pipelines.cli_predict", "_check_processor_class", "json.loads", "json", (PROCESSOR_CLASS, FUZZ)),
    ("pipelines.corpus_prediction", "_records_of", "json.loads", "json",
     ("test_distributed_predict.py::test_a_killed_prediction_started_again_predicts_only_the_rest",)),  # fmt: skip
    ("pipelines.cli_predict", "check_model_dir", "safetensors.safe_open", "safetensors", (PREDICT_MODEL, FUZZ)),
    ("pipelines.workers", "_describe_error", "pickle.loads", "internal", (WORKER_ERRORS,)),
    ("pipelines.workers", "_receive", "pickle.loads", "internal", (WORKER_WINDOWS,)),
    ("pipelines.workers", "_worker", "pickle.loads", "internal", (WORKER_ITEMS,)),
    ("plotting.training", "read_training_log", "json.loads", "json", (TRAINING_LOG,)),
    ("processing.audio", "AvEmotionFeatureExtractor.from_pretrained", "super().from_pretrained", "json", ("test_processor_settings.py::test_feature_extractor_settings_are_checked", PAYLOAD_SUB_FE, PAYLOAD_SUB_FE_AUTO_MAP)),  # noqa: E501
    # facenet-pytorch's .pt data files (from its wheel or an installed distribution): sha256-pinned before unpickling
    ("processing.face_weights", "_read_member", "torch.load", "weights-only torch", (FACE_WEIGHTS_PAYLOAD, FACE_WEIGHTS_TAMPERED, FACE_WEIGHTS_SHAPES, FACE_WEIGHTS_DISTRIBUTION)),  # noqa: E501
    ("processing.face_weights", "_read_safetensors", "safetensors.torch.load_file", "safetensors", (FACE_WEIGHTS_PAYLOAD, FACE_WEIGHTS_BAD, FACE_WEIGHTS_CACHE)),  # noqa: E501
    ("processing.faces", "HaarCascadeFaceDetector.__init__", "cv2.CascadeClassifier", "opencv cascade", (FACE_DETECTOR,)),  # noqa: E501
    ("processing.processor", "AvEmotionProcessor._sub_processors", "AvEmotionFeatureExtractor.from_pretrained", "transformers loader", (PAYLOAD_SUB_FE, PAYLOAD_SUB_FE_AUTO_MAP,)),  # noqa: E501
    ("processing.processor", "AvEmotionProcessor._sub_processors", "transformers.AutoTokenizer.from_pretrained", "transformers loader", (TOKENIZER, FUZZ)),  # noqa: E501
    ("processing.processor", "AvEmotionProcessor.from_backbones", "AvEmotionFeatureExtractor.get_feature_extractor_dict", "json", (PAYLOAD_PROC_BACKBONES, PAYLOAD_PROC_BACKBONES_AUTO_MAP,)),  # noqa: E501
    ("processing.processor", "AvEmotionProcessor.from_pretrained", "cls.get_processor_dict", "json", (AUTO_MAP, FACE_DETECTOR, FUZZ)),  # noqa: E501
    ("processing.processor", "check_tokenizer_config", "json.loads", "json", (TOKENIZER,)),
    ("processing.video", "AvEmotionImageProcessor.from_backbone", "cls.get_image_processor_dict", "json", (PAYLOAD_IMAGE_BACKBONE, PAYLOAD_IMAGE_BACKBONE_AUTO_MAP,)),
    ("processing.video", "AvEmotionImageProcessor.from_pretrained", "super().from_pretrained", "json", ("test_processor_settings.py::test_image_processor_settings_are_checked", FUZZ)),  # noqa: E501
    ("training.cli_train", "ModelArguments.__post_init__", "json.loads", "json", (CONFIG_OVERRIDES,)),
    ("training.cli_train", "_build_model", "transformers.AutoConfig.from_pretrained", "transformers loader", (CONFIG_FILE,)),  # noqa: E501
    ("training.cli_train", "load_processor", "transformers.AutoFeatureExtractor.from_pretrained", "transformers loader", (PAYLOAD_FE_TYPE, PAYLOAD_PREPROCESSOR_JSON, PAYLOAD_PROCESSOR_CLASS,)),  # noqa: E501
    ("training.cli_train", "load_processor", "transformers.AutoProcessor.from_pretrained", "transformers loader", (PAYLOAD_PROCESSOR_AUTO_MAP, PAYLOAD_PROCESSOR_CLASS,)),  # noqa: E501
    ("training.files", "file_problem", "json.loads", "json", (TRUNCATED_CHECKPOINT, RESUME_STATE)),
    ("training.files", "file_problem", "safetensors.safe_open", "safetensors", (TRUNCATED_CHECKPOINT, FUZZ)),
    ("training.files", "load_weights", "safetensors.torch.load_file", "safetensors", (TRUNCATED_CHECKPOINT, FUZZ)),
    ("training.hub", "_load_processor", "transformers.AutoFeatureExtractor.from_pretrained", "transformers loader", (PAYLOAD_FE_TYPE,)),  # noqa: E501
    ("training.hub", "_load_processor", "transformers.AutoImageProcessor.from_pretrained", "transformers loader", (PAYLOAD_FE_TYPE,)),  # noqa: E501
    ("training.hub", "_load_processor", "transformers.AutoProcessor.from_pretrained", "transformers loader", (PAYLOAD_PROCESSOR_AUTO_MAP, PAYLOAD_PROCESSOR_CLASS,)),
    # the one loader of a trained model directory: train --model_name_or_path, evaluate, push
    ("training.run_files", "load_model", "avemotion.models.auto.AutoModelForEmotionRecognition.from_pretrained", "transformers loader", (TRUNCATED_WEIGHTS, PUSH_TRUNCATED, FUZZ)),  # noqa: E501
    ("training.resume_state", "read_state", "safetensors.torch.load_file", "safetensors", (RESUME_STATE, FUZZ)),
    ("data.loading", "load_saved_dataset", "datasets.load_from_disk", "arrow dataset", (PAYLOAD_DATASET_PICKLE, PAYLOAD_DATASET_STATE, PAYLOAD_EVALUATE_DATASET)),  # noqa: E501
    ("utils.json_files", "parse_json", "json.loads", "json", (PAYLOAD_CORPUS_METADATA, PAYLOAD_CONVERT_CONFIG, PAYLOAD_CONVERT_AUTO_MAP, PAYLOAD_PUSH_METRICS, PAYLOAD_PREPROCESSOR_JSON, PAYLOAD_SANITIZE, PAYLOAD_SANITIZE_AUTO_MAP, TRAINER_STATE, RESUME_STATE, FUZZ)),  # noqa: E501
    ("utils.safe_pickle", "restricted_load", "RestrictedUnpickler", "restricted pickle", (SAFE_PICKLE, SAFE_PICKLE_EVAL)),  # noqa: E501
]
# fmt: on


# ------------------------------------------------------------------------------------------------------- the scan


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name of what it was imported as (absolute imports; relative ones stay local names)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                names[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(names.get(node.id, node.id))
    elif isinstance(node, ast.Call):
        inner = _dotted(node.func, names)
        parts.append(f"{inner or '?'}()")
    else:
        return None
    return ".".join(reversed(parts))


def _is_loader(name: str) -> bool:
    return name in EXACT or name.split(".")[-1] in LAST or name.startswith(PREFIXES)


def scan() -> dict[tuple[str, str, str], list[int]]:
    """(module without `avemotion.`, enclosing function, called name) -> line numbers, for every loading call."""
    found: dict[tuple[str, str, str], list[int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        tree = ast.parse(path.read_text(), str(path))
        names = _aliases(tree)

        def visit(node: ast.AST, scope: tuple[str, ...], module=module, names=names) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    visit(child, (*scope, child.name))
                    continue
                if isinstance(child, ast.Call):
                    name = _dotted(child.func, names)
                    if name and _is_loader(name):
                        found.setdefault((module, ".".join(scope) or "<module>", name), []).append(child.lineno)
                visit(child, scope)

        visit(tree, ())
    return found


FOUND = scan()
LISTED = {(module, function, call): (kind, tests) for module, function, call, kind, tests in INVENTORY}


def _test_functions() -> set[str]:
    """`file.py::name` and `file.py::Class::name` of every test function in tests/."""
    names = set()
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                names.add(f"{path.name}::{node.name}")
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                        names.add(f"{path.name}::{node.name}::{item.name}")
    return names


# ------------------------------------------------------------------------------------------------------- the tests


def test_every_loading_call_is_in_the_inventory():
    missing = sorted(set(FOUND) - set(LISTED))
    lines = [f'    ("{m}", "{f}", "{c}", KIND, (TESTS,)),  # line {FOUND[(m, f, c)]}' for m, f, c in missing]
    assert not missing, (
        "calls that read or deserialise data a user may have given, missing from INVENTORY in "
        "tests/test_load_inventory.py: add each with the kind of data and a test that plants a payload for it:\n"
        + "\n".join(lines)
    )


def test_no_inventory_entry_is_stale():
    stale = sorted(set(LISTED) - set(FOUND))
    assert not stale, "INVENTORY entries whose call is no longer in src/avemotion (moved or removed):\n" + "\n".join(
        f"    {entry}" for entry in stale
    )


def test_inventory_entries_are_unique_and_of_known_kinds():
    keys = [(module, function, call) for module, function, call, _, _ in INVENTORY]
    assert len(keys) == len(set(keys)), [key for key in keys if keys.count(key) > 1]
    unknown = [(key, kind) for key, (kind, _) in LISTED.items() if kind not in KINDS]
    assert not unknown, f"kinds not in KINDS: {unknown}"


def test_every_entry_names_existing_payload_tests():
    """No entry without a payload test (`None`), and every named test exists (`file.py::name` in tests/)."""
    existing = _test_functions()
    without = [key for key, (_, tests) in LISTED.items() if tests is None]
    unknown = [(key, test) for key, (_, tests) in LISTED.items() for test in tests or () if test not in existing]
    empty = [key for key, (_, tests) in LISTED.items() if tests == ()]
    report = []
    if without:
        report.append(f"{len(without)} call sites have no test that plants a payload for them (None):")
        report += [f"    {module}:{function}: {call} ({LISTED[(module, function, call)][0]})"
                   for module, function, call in without]  # fmt: skip
    if unknown:
        report.append("named tests that do not exist in tests/:")
        report += [f"    {key}: {test}" for key, test in unknown]
    if empty:
        report.append(f"entries with an empty test list (use None while the test is to be written): {empty}")
    assert not report, "\n".join(report)


def test_the_scan_sees_the_loaders_it_must_see():
    """The scan resolves imports and qualnames: a few call sites that must be found, found under their names."""
    assert ("utils.safe_pickle", "restricted_load", "RestrictedUnpickler") in FOUND
    assert any(call == "safetensors.torch.load_file" for _, _, call in FOUND)
    tree = ast.parse(
        "import numpy as np\nfrom safetensors.torch import load_file as lf\nimport pickle, yaml\n"
        "class A:\n    def f(self):\n        np.load('x'); lf('y'); pickle.Unpickler(h).load(); yaml.load(s)\n"
        "        self.accelerator.load_state('d'); eval('1'); len('x')\n"
    )
    names = _aliases(tree)
    calls = [_dotted(node.func, names) for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert {c for c in calls if _is_loader(c)} == {
        "numpy.load", "safetensors.torch.load_file", "pickle.Unpickler", "yaml.load", "self.accelerator.load_state",
        "eval",
    }  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_is_used(kind):
    assert any(entry_kind == kind for entry_kind, _ in LISTED.values()), f"KINDS[{kind!r}] is used by no entry"

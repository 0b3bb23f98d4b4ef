"""`push_to_hub` of a trained model + processor + generated model card, against a loopback stand-in for the Hub."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from vavl_testing import tiny_vavl_config

from avemotion import AvEmotionFeatureExtractor, VavlForEmotionRecognition
from avemotion.cli import main as cli_main
from avemotion.training.hub import build_model_card, metrics_table

REPORT = {
    "combined": {"accuracy": 0.75, "unweighted_accuracy": 0.7, "macro_f1": 0.69, "micro_f1": 0.75, "num_samples": 12},
    "audio": {"accuracy": 0.5, "unweighted_accuracy": 0.45, "macro_f1": 0.4, "micro_f1": 0.5, "num_samples": 12},
    "loss": 1.2,
    "num_samples": 12,
}


class HubStub:
    """The four endpoints an upload needs (hf_ecosystem.md §11); files land in `store`. Bound to 127.0.0.1, and
    stopped by the fixture."""

    def __init__(self):
        self.store: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, payload=None):
                body = json.dumps(payload or {}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self):
                stub.requests.append(f"HEAD {self.path}")
                self._reply(404)

            do_GET = do_HEAD

            def do_POST(self):
                stub.requests.append(f"POST {self.path}")
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/api/repos/create":
                    name = json.loads(body)["name"]
                    repo = f"{json.loads(body).get('organization') or 'user'}/{name}" if "/" not in name else name
                    stub.store.setdefault(repo, {})
                    return self._reply(200, {"url": f"http://127.0.0.1/{repo}", "name": repo, "id": repo})
                if self.path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                parts = self.path.split("/")
                if "preupload" in parts:
                    files = json.loads(body)["files"]
                    answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
                    return self._reply(200, {"files": answer})
                if "commit" in parts:
                    repo = "/".join(parts[3:5])
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            value = item["value"]
                            stub.store.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                    return self._reply(200, {"commitUrl": f"http://127.0.0.1/{repo}/commit/1", "commitOid": "1" * 40})
                return self._reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 10
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def hub(monkeypatch):
    stub = HubStub()
    stub.thread.start()
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(constants, "ENDPOINT", stub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


def test_model_card_has_metrics_per_branch_and_hyperparameters():
    card = build_model_card(
        "vavl", "org/vavl-test", REPORT, training_data="Synthetic corpus, speaker-independent split.",
        hyperparameters={"learning_rate": 5e-5, "num_train_epochs": 3},
    )  # fmt: skip
    text = str(card)
    assert "| combined (per-row best available) | 0.7500 | 0.7000 | 0.6900 | 0.7500 | 12 |" in text
    assert "| audio | 0.5000 | 0.4500 | 0.4000 | 0.5000 | 12 |" in text
    assert "| learning_rate | `5e-05` |" in text and "Synthetic corpus" in text
    assert "org/vavl-test" in text and "goncalves2023vavl" in text
    assert card.data.license == "apache-2.0" and "vavl" in card.data.tags
    assert {r.metric_type for r in card.data.eval_results} >= {"accuracy", "macro_f1"}
    assert metrics_table({"loss": 1.0}) == ""


def test_push_model_processor_and_card(tmp_path, hub):
    model = VavlForEmotionRecognition(tiny_vavl_config())
    model.save_pretrained(tmp_path / "model")
    AvEmotionFeatureExtractor().save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "test_results.json").write_text(json.dumps(REPORT))
    (tmp_path / "model" / "training_args.json").write_text(json.dumps({"learning_rate": 0.003, "seed": 7}))
    code = cli_main(["push", "--model", str(tmp_path / "model"), "--repo_id", "org/tiny-vavl",
                     "--training_data", "Toy rows written by the test."])  # fmt: skip
    assert code == 0
    files = hub.store["org/tiny-vavl"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(files)
    readme = files["README.md"].decode()
    assert "| audio | 0.5000 |" in readme and "Toy rows written by the test." in readme and "| seed | `7` |" in readme
    # the pushed weights are the model's weights
    (tmp_path / "pulled").mkdir()
    for name, content in files.items():
        Path(tmp_path / "pulled" / name).write_bytes(content)
    reloaded = VavlForEmotionRecognition.from_pretrained(tmp_path / "pulled")
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert (a == b).all(), name
    assert any(r.startswith("POST /api/repos/create") for r in hub.requests)

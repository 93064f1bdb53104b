# Every target creates the virtual environment when it is missing (or when
# pyproject.toml or this Makefile changed). torch and torchvision are resolved from the registry
# together, so they match (a CUDA build that also runs on the CPU).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RECIPE ?= recipes/demo.yaml
OUT    ?=
PYTEST_ARGS ?=

.PHONY: dataset test train bench bench-peers schema clean venv lint screenshots

venv: $(STAMP)

# Every optional extra ([all]: clip, train, ocr, llm, ray) so the whole test suite runs.
# The core's OpenCV is opencv-python-headless; rapidocr ([ocr]) asks for opencv-python, the same cv2 files
# with a GUI, and with both installed each overwrites the other's. So opencv-python goes out again and
# the headless build is put back whole. NudeNet (filters.nsfw) goes in with --no-deps, as before.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev,assets]'
	$(BIN)/python -m pip uninstall -q -y opencv-python
	$(BIN)/python -m pip install -q --force-reinstall --no-deps \
		"opencv-python-headless==$$($(BIN)/python -m pip show opencv-python-headless | sed -n 's/^Version: //p')"
	$(BIN)/python -m pip install -q --no-deps 'nudenet>=3.4,<4'
	@touch $(STAMP)

## make dataset [RECIPE=recipes/x.yaml] [OUT=dir]: run a recipe (default: the bundled offline demo)
dataset: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/datagen run $(RECIPE) $(if $(OUT),--out $(OUT))

## make test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## make train: both mPLUG-Owl stages, tiny model, on the demo's shards (runs `make dataset` first if needed),
## then one `datagen chat` answer about a demo picture
train: $(STAMP)
	@test -f out/demo/manifest.json || $(MAKE) dataset
	$(BIN)/datagen train recipes/train/stage1_tiny.yaml --no-resume
	$(BIN)/datagen train recipes/train/stage2_tiny.yaml --no-resume
	$(BIN)/datagen chat out/train/stage2_tiny --image datagen/assets/demo/images/motorcycle_shelf.jpg \
		--max-new-tokens 40 "How many motorcycles does the photo show?"

## make bench: throughput benchmarks, each printing a ratio against a baseline measured in the same run
bench: $(STAMP)
	@for b in bench/bench_*.py; do [ $$b = bench/bench_download.py ] && continue; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

## make bench-peers: datagen against img2dataset, side by side (img2dataset goes into its own venv,
## bench/.peers-venv, so its pins never touch ours); ARGS="--images 300 --rounds 1" for a quick look
bench-peers: $(STAMP)
	@test -x bench/.peers-venv/bin/img2dataset || ($(PYTHON) -m venv bench/.peers-venv && \
		bench/.peers-venv/bin/python -m pip install -q 'img2dataset==1.47.0')
	$(BIN)/python bench/bench_download.py $(ARGS)

## make screenshots: docs/report.png and docs/viewer.png (the README's), rendered in chromium from out/demo
## (runs the demo first when out/demo holds no finished run)
screenshots: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-1} $(BIN)/python scripts/screenshots.py --out out/demo --dest docs

## make schema: regenerate schemas/recipe.schema.json from the config models
schema: $(STAMP)
	$(BIN)/datagen schema

clean:
	rm -rf out .pytest_cache

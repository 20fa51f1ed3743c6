# `make` alone lists every target (`make help`). The two that run the course (see README):
#   make lab    set everything up and open the course in JupyterLab
#   make test   set everything up and run the whole test suite (unit tests + every notebook through nbval)
# Every script of the repository has a target below; ARGS passes options to it, e.g. `make lr-grid ARGS=--quick`.
# A line `target: ... ## what it does` is what `make help` prints; `##@ Title` starts a group.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# HF_HUB_OFFLINE=1: nothing here reaches the Hugging Face Hub (tests/test_hf.py also refuses sockets).
RUN = HF_HUB_OFFLINE=1 $(BIN)/python
ARGS ?=
NB ?= $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
FAST = not slow and not notebooks and not browser

.DEFAULT_GOAL := help
.PHONY: help setup setup-dev lab clean test test-fast test-notebooks check-rerun lint \
	run-notebooks budget budget-docs headers check-headers docs-images teacher student html \
	pretrain-base precompute-lora-updates lr-grid prompt-placement sweep-lora-rank \
	compare-methods output-bias lora-performance qlora-performance method-timings lora-family

##@ Set up and open the course
help: ## list every target with what it does (the default target)
	@awk 'BEGIN {FS = ":.*## "} /^##@ / {printf "\n%s\n", substr($$0, 5)} \
	/^[a-z][a-z0-9-]*:.*## / {printf "  make %-24s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.course: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt -e .
	touch $@

$(VENV)/.dev: $(VENV)/.course requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.course ## create .venv/ with what the course needs (requirements.txt and the package)

# Linux laptops without a GPU: pip would fetch torch's CUDA build from PyPI (gigabytes); PyTorch's CPU wheel index
# has the CPU build of the same pinned version, which then satisfies requirements.txt (docs/LOGISTICS.md).
.PHONY: setup-cpu
setup-cpu: $(BIN)/python ## like setup, with the CPU build of torch (a Linux laptop without a GPU)
	$(BIN)/pip install -q "$$(grep -m1 '^torch==' requirements.txt)" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -r requirements.txt -e .
	touch $(VENV)/.course

setup-dev: $(VENV)/.dev ## add what the tests, the benchmarks and the linter need (requirements-dev.txt)

# HF_HUB_OFFLINE=1: the course needs nothing from the Hugging Face Hub (bitsandbytes would otherwise ask it for an
# optional CPU kernel). To try notebook 11's or 14's MODEL switch with a Hub model, start `jupyter lab` without it.
lab: setup ## open the course in JupyterLab
	HF_HUB_OFFLINE=1 $(BIN)/jupyter lab notebooks/00_start_here.ipynb

clean: ## remove .venv/, build/ and the caches
	rm -rf $(VENV) .pytest_cache build *.egg-info

##@ Tests and checks
test: setup-dev ## every test: unit tests, every notebook (nbval + memory check), the browser test
	$(RUN) -m pytest

# test-fast runs torch on one thread: the tests' models are tiny, and on a busy machine torch's two threads wait
# on each other (measured at load average 7 on two cores: 95 s with one thread, 463 s with two).
test-fast: setup-dev ## the package's tests without notebooks, browser or slow tests (under two minutes)
	OMP_NUM_THREADS=1 $(RUN) -m pytest tests -m "$(FAST)" -q

test-notebooks: setup-dev ## only the notebooks through nbval, each with its kernel's memory check
	$(RUN) -m pytest notebooks

check-rerun: setup-dev ## each notebook with every cell run twice, reverse order (outside CI: twice the time)
	$(RUN) tools/check_memory_limit.py $(ARGS)

lint: setup-dev ## ruff over the package, tools, experiments, benchmarks, tests and notebooks
	$(BIN)/ruff check .

##@ Notebooks (tools/)
run-notebooks: setup ## execute notebooks in place, as committed (NB=notebooks/03_adapters.ipynb; default all)
	$(RUN) tools/run_notebook.py $(NB)

budget: setup ## measure each notebook's run time and kernel peak RSS (ARGS="--runs 3")
	$(RUN) tools/notebook_budget.py $(ARGS)

budget-docs: setup ## measure three runs; write the figures into README, docs/WORKSHOP.md, the headers
	$(RUN) tools/notebook_budget.py --runs 3 --update-docs $(ARGS)

headers: setup ## write the Colab / Binder badges and the Colab set-up cell into every notebook
	$(RUN) tools/sync_notebook_headers.py $(ARGS)

check-headers: setup ## exit 1 if a notebook's badges or Colab set-up cell are out of sync
	$(RUN) tools/sync_notebook_headers.py --check

docs-images: setup ## draw the README's and the site's figures into docs/images/ (after changing a diagram)
	$(RUN) tools/make_docs_images.py

##@ Editions of the course, into build/ (git-ignored; docs/WORKSHOP.md)
teacher: setup ## solutions filled in between nbgrader's markers, into build/teacher/
	$(RUN) tools/build_editions.py teacher $(ARGS)

student: setup ## the folded solutions removed, into build/student/
	$(RUN) tools/build_editions.py student $(ARGS)

.PHONY: course
course: setup ## an nbgrader course directory from the teacher edition, into build/course/ (docs/GRADING.md)
	$(RUN) tools/build_editions.py course $(ARGS)

html: setup ## the static HTML edition (figures in place of widgets), into build/html/
	$(RUN) tools/build_html.py $(ARGS)

# The site: Sphinx with myst-nb and sphinx-book-theme (docs/site/conf.py); the committed notebooks, not re-run.
.PHONY: site
site: setup-dev ## the course as a website with search, into build/site/html/ (REF=v1.0: launch that tag)
	LORA_TEACH_SITE_REF="$(REF)" $(RUN) -m sphinx -b html -E -q -c docs/site . build/site/html -d build/site/.doctrees
	@echo "open build/site/html/index.html"

##@ Experiments (long runs; their results ship in lora_teach/)
pretrain-base: setup ## pretrain the base model into lora_teach/weights/ (about 15 minutes)
	$(RUN) experiments/pretrain_base.py $(ARGS)

precompute-lora-updates: setup ## the adapters notebook 08's viewer shows (lora_teach/data/precomputed/)
	$(RUN) experiments/precompute_lora_updates.py $(ARGS)

lr-grid: setup ## every method at four learning rates and two seeds (about 27 minutes; ARGS=--quick)
	$(RUN) experiments/lr_grid.py $(ARGS)

prompt-placement: setup ## soft prompts before or after the passage (about 17 minutes; ARGS=--quick)
	$(RUN) experiments/prompt_placement.py $(ARGS)

sweep-lora-rank: setup ## notebook 09's sweep of LoRA's rank, alpha and targets (about 10 minutes)
	$(RUN) experiments/sweep_lora_rank.py $(ARGS)

compare-methods: setup ## every method at its chosen rate, five seeds: docs/PERFORMANCE.md's table (ARGS=--quick)
	$(RUN) experiments/compare_methods.py $(ARGS)

output-bias: setup ## notebook 05's yardstick, a trained output bias, five seeds (about 5 minutes; ARGS=--dialogue)
	$(RUN) experiments/output_bias.py $(ARGS)

##@ Benchmarks (results in lora_teach/results/)
lora-performance: setup-dev ## our LoRA's step against PEFT's and full fine-tuning; merged inference; memory
	$(RUN) benchmarks/lora_performance.py $(ARGS)

qlora-performance: setup-dev ## QLoRA's 4-bit base: bytes, step against LoRA's, NF4 against bitsandbytes
	$(RUN) benchmarks/qlora_performance.py $(ARGS)

method-timings: setup ## every method's training step and served forward pass, as notebook 10 reports them
	$(RUN) benchmarks/method_timings.py $(ARGS)

lora-family: setup-dev ## rsLoRA, DoRA, PiSSA and LoRA+ side by side, for notebook 13 (ARGS=--quick)
	$(RUN) benchmarks/lora_family.py $(ARGS)

distributed-figures: setup-dev ## notebook 15's DDP / FSDP figures on two local processes, more repeats (ARGS=--out F)
	$(RUN) experiments/distributed_figures.py $(ARGS)

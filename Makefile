# Two commands run the course (see README):
#   make lab    set everything up and open the course in JupyterLab
#   make test   set everything up and run the whole test suite (unit tests + every notebook through nbval)
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: lab test lint setup setup-dev sweep clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.course: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt -e .
	touch $@

$(VENV)/.dev: $(VENV)/.course requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

setup: $(VENV)/.course
setup-dev: $(VENV)/.dev

lab: setup
	$(BIN)/jupyter lab notebooks/00_start_here.ipynb

# HF_HUB_OFFLINE=1: the notebooks and tests never reach the Hugging Face Hub (tests/test_hf.py also refuses sockets).
test: setup-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: setup-dev
	$(BIN)/ruff check .

sweep: setup-dev
	$(BIN)/python scripts/sweep_lora_rank.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# Editions of the course (docs/WORKSHOP.md), built from notebooks/ (the learner's edition, with each solution
# folded under its exercise); all write into build/, which git ignores.
#   make teacher  solutions filled in between nbgrader's `### BEGIN SOLUTION` markers (an nbgrader source)
#   make student  the folded solutions removed, for a class that gets the solutions later
#   make html     the static HTML edition (nbconvert), figures in place of widgets
.PHONY: teacher student html

teacher: setup
	$(BIN)/python scripts/build_editions.py teacher

student: setup
	$(BIN)/python scripts/build_editions.py student

html: setup
	$(BIN)/python scripts/build_html.py

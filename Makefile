# The two commands: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean screenshot

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[edge,server,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	YOLO_OFFLINE=$${YOLO_OFFLINE:-1} $(BIN)/crowdflow demo

test: $(STAMP)
	YOLO_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

screenshot: $(STAMP)
	$(BIN)/python scripts/screenshot.py

clean:
	rm -rf $(VENV) var .pytest_cache

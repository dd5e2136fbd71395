# deepmox: `make run` and `make test` are all a newcomer needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# bench/soak.py's length (30 minutes by default; `make bench SOAK_MINUTES=10`)
SOAK_MINUTES ?= 30
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/deepmox --log-format text demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/http_latency.py
	$(BIN)/python bench/http_breakdown.py
	$(BIN)/python bench/d1_requests.py
	$(BIN)/python bench/idle.py
	$(BIN)/python bench/feed_clients.py
	$(BIN)/python bench/transcode.py
	$(BIN)/python bench/s3_upload.py
	$(BIN)/python bench/chaos.py
	$(BIN)/python bench/chaos.py --backend http
	$(BIN)/python bench/chaos.py --backend http --r2 s3 --faults 0.1
	$(BIN)/python bench/chaos.py --backend http --r2 s3 --faults 0.1 --no-kill
	$(BIN)/python bench/chaos.py --backend http --r2 s3 --faults 0.1 --ai
	$(BIN)/python bench/ai_storm.py
	$(BIN)/python bench/describe_overhead.py
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

clean:
	rm -rf $(VENV) var

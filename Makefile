# The pack's two commands (see README): `make demo` and `make test`.
# Everything lands in git-ignored folders: .venv/ (Python), .comfyui/ (the
# real ComfyUI 0.3.75 host), .run/ (the demo server's base directory).

PYTHON := .venv/bin/python
PORT ?= 8188
BASE ?= $(CURDIR)/.run/base

.PHONY: setup serve demo stop test test-unit test-browser test-held-out workflows bench world-adapters clean

setup:
	@./dev/scripts/setup_host.sh

serve: setup
	@$(PYTHON) dev/scripts/demo.py --serve-only --port $(PORT) --base $(BASE)

demo: setup
	@$(PYTHON) dev/scripts/demo.py --port $(PORT) --base $(BASE)

stop:
	@if [ -f $(BASE)/server.pid ]; then kill $$(cat $(BASE)/server.pid) 2>/dev/null && echo "stopped the demo server"; rm -f $(BASE)/server.pid; fi

test: setup
	@cd dev/tests && ../../$(PYTHON) -m pytest $(PYTEST_ARGS)

test-unit: setup
	@cd dev/tests && ../../$(PYTHON) -m pytest unit $(PYTEST_ARGS)

test-browser: setup
	@cd dev/tests && ../../$(PYTHON) -m pytest browser $(PYTEST_ARGS)

# A held-out pair of the toy world trained at fresh seeds and mixed (dev/tests/integration/test_toy_world.py): about
# 17 minutes on 2 cores, so `make test` (CI's half hour) leaves it out.
test-held-out: setup
	@cd dev/tests && QRLORA_HELD_OUT_TRAINING=1 ../../$(PYTHON) -m pytest integration/test_toy_world.py $(PYTEST_ARGS)

# Rebuild example_workflows/ (the graphs, laid out in the real page, and their .jpg thumbnails from real runs); see dev/scripts/build_workflows.py.
workflows: setup
	@$(PYTHON) dev/scripts/build_workflows.py $(NAMES)

bench: setup
	@$(PYTHON) dev/bench/run.py $(BENCH_ARGS)

# Retrain the toy world's two shipped adapters with Train QR-LoRA (dev/toy_world/adapters.py; CPU or GPU).
world-adapters: setup
	@cd dev && ../$(PYTHON) -m toy_world.adapters $(ADAPTER_ARGS)

clean:
	rm -rf .run .cache/stamps

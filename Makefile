# agentdock developer entry points. `make test` is what CI runs (.ci/run).
PY := .venv/bin/python
IMAGES := agentdock-small:latest agentdock-full:latest agentdock-full-base:latest

.PHONY: setup test demo bench clean-images

PG_LEFT_OUT := --ignore=tests/integration/test_group_load.py --ignore=tests/integration/test_bench_smoke.py \
	--ignore=tests/integration/test_daemons.py --ignore=tests/integration/test_real_clis.py \
	--ignore=tests/integration/test_real_cli_tasks_anthropic.py --ignore=tests/integration/test_real_cli_tasks_openai.py

setup:
	bash scripts/setup.sh

# pytest exits 5 when it collected no tests: that is a failure too. The whole suite runs on SQLite
# (the default store), then the engine's suite (tests/unit: every service on the fake backend) and the
# Docker integration suite again on PostgreSQL, in a throwaway cluster the tests start
# (tests/pgcluster.py). Left out of the second pass: the load tests (test_group_load, six minutes; the
# 1,000-entry group over three daemons is PostgreSQL's in test_daemons), the benches (they print both
# stores) and the real CLIs' provider tests (no store in them).
test: setup
	@rc=0; $(PY) -m pytest -q || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; \
	echo "make test: tests/unit and tests/integration again on PostgreSQL (AGENTDOCK_TEST_STORE=postgres)"; \
	AGENTDOCK_TEST_STORE=postgres $(PY) -m pytest -q tests/unit tests/integration $(PG_LEFT_OUT) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; \
	exit $$rc

demo: setup
	$(PY) -m mcp_server.demo

# `make bench BENCH_FLAGS=--quick` runs each at a tiny size: a check that they run, not a measurement.
bench: setup
	$(PY) bench/run_latency.py $(BENCH_FLAGS)
	$(PY) bench/engine_throughput.py $(BENCH_FLAGS)
	$(PY) bench/agent_socket.py $(BENCH_FLAGS)
	$(PY) bench/group_fanout.py $(BENCH_FLAGS)
	$(PY) bench/task_queue.py $(BENCH_FLAGS)
	$(PY) bench/gateway.py $(BENCH_FLAGS)
	$(PY) bench/dashboard.py $(BENCH_FLAGS)

# Removes the images only; the debootstrap rootfs cache under $$AGENTDOCK_HOME/cache
# stays, so the next build of the full image takes seconds, not a minute.
clean-images:
	@for img in $(IMAGES); do \
	  if docker image inspect $$img >/dev/null 2>&1; then docker rmi -f $$img; fi; \
	done

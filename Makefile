# podbgp: `make demo` runs the lab, `make test` runs every test. Both set themselves up.
VENV      ?= .venv
PY        := $(VENV)/bin/python
PODBGP    := $(VENV)/bin/podbgp
PYTHON    ?= python3
APT_PKGS  := frr bird2 containernetworking-plugins iproute2 iputils-ping openssl nftables
PYTEST    ?= $(PY) -m pytest
export KUBECACHEDIR ?= $(CURDIR)/.kubecache
IMAGE     ?= localhost/podbgp:dev
BASE_IMAGE ?=

.PHONY: setup system venv demo test test-unit test-privileged test-lab bench clean image

setup: system venv

# System packages, installed as root when missing (FRR and BIRD 2 for the lab's ToRs and the benchmarks, the CNI
# plugins, ip, ping, nft for the lab's proxy).
system:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing system packages:$$missing (run as root to install them)"; exit 1; fi; \
	  echo "installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi; \
	if [ "$$(id -u)" = 0 ] && ! getent group frrvty >/dev/null; then \
	  echo "FRR is half-configured (no frrvty group): running dpkg --configure -a"; dpkg --configure -a; \
	fi

venv: $(VENV)/.installed

# The wheel ships no lab/: the checkout's root on the venv's path gives `podbgp lab` (and lab,
# bench, tests to the venv's python wherever it runs).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	echo "$(CURDIR)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/podbgp-checkout.pth"
	touch $@

demo: setup
	$(PODBGP) lab demo

test: setup
	$(PYTEST) -q tests

test-unit: venv
	$(PYTEST) -q -m "not privileged and not lab" tests

test-privileged: setup
	$(PYTEST) -q -m privileged tests

test-lab: setup
	$(PYTEST) -q -m lab tests

# Benchmarks, as root: route programming against `ip -batch`, then one node of a 1,000- and of a
# 5,000-node cluster against BIRD 2.
bench: setup
	$(PY) -m bench.netlink_apply
	$(PY) -m bench.scale --nodes 1000
	$(PY) -m bench.scale --nodes 5000

# The container image, as root: buildah with a debootstrap base and a host-built wheelhouse (no
# registry needed), or FROM $(BASE_IMAGE) when given; nothing is rebuilt while its inputs are unchanged.
image: venv
	$(PY) -m lab.image build --image $(IMAGE) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .kubecache *.egg-info

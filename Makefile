# Two entry points (see README): `make demo` and `make test`. Both build .venv/ first. `make test-fast`
# leaves out the tests marked slow (whole chains, several processes, kernels), for development.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
KVENV  := .venv-kaggle
KPY    := $(KVENV)/bin/python
KSTAMP := $(KVENV)/.installed
JA_FONT_PACKAGES := fonts-kouzan-mouhitsu fonts-aoyagi-kouzan-t fonts-aoyagi-soseki \
                    fonts-yozvox-yozfont-antique fonts-ipaexfont-mincho

.PHONY: venv kaggle-venv fonts test test-fast demo clean-venv

venv: $(STAMP)

# uv resolves torch/torchvision from the package registry (pip here would prefer a local
# CPU-only torch wheel that does not match the registry's torchvision), and compiles the packages'
# bytecode once (--compile-bytecode): uv leaves that to the first import, which cannot keep it where
# PYTHONDONTWRITEBYTECODE is set, so every process would compile torch, sympy and pandas again
# (about 4 of the 8 CPU-seconds of `import torch, torchvision.ops, pandas` here). The venv is made anew when
# requirements.txt changes: installing over an old one would keep what the list no longer has (an
# old package's copy of a shared file, such as a second NCCL's libnccl.so.2).
$(STAMP): requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip --version >/dev/null 2>&1 || $(VPY) -m ensurepip >/dev/null
	$(VPY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(VPY) -r requirements.txt
	$(VPY) -c "import torch, torchvision; torchvision.ops.nms(torch.rand(4, 4).cumsum(1), torch.rand(4), 0.5); print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'ok')"
	@touch $(STAMP)

# The second environment: requirements.txt with the Kaggle image's versions (requirements-kaggle.txt:
# torch 2.10, torchvision 0.25 ...), for the tests marked kaggle_image (the tiny chain, the kernel
# paths). From uv's cache it takes seconds; the first time it downloads about 4 GB (torch 2.10
# and its CUDA 12 libraries).
kaggle-venv: $(KSTAMP)

$(KSTAMP): requirements.txt requirements-kaggle.txt $(STAMP)
	rm -rf $(KVENV)
	$(PYTHON) -m venv --without-pip $(KVENV)
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(KPY) -r requirements.txt --override requirements-kaggle.txt
	$(KPY) -c "import torch, torchvision; torchvision.ops.nms(torch.rand(4, 4).cumsum(1), torch.rand(4), 0.5); print('Kaggle image env: torch', torch.__version__, 'torchvision', torchvision.__version__, 'ok')"
	@touch $(KSTAMP)

# Japanese fonts for synthetic pages. Best effort: Debian packages when apt is usable; without them
# kzlib.synth falls back to the font file shipped by matplotlib-fontja (in requirements.txt).
fonts:
	@if command -v fc-list >/dev/null && [ -n "$$(fc-list :lang=ja file 2>/dev/null)" ]; then \
		echo "Japanese fonts: $$(fc-list :lang=ja file | wc -l) files"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(JA_FONT_PACKAGES) >/dev/null) \
		|| echo "warning: could not install $(JA_FONT_PACKAGES); using the fallback font"; \
	else \
		echo "warning: no Japanese system fonts; using the fallback font (install: $(JA_FONT_PACKAGES))"; \
	fi

# The whole suite, then its kaggle_image tests again under the Kaggle image's versions.
test: $(STAMP) $(KSTAMP) fonts
	$(VPY) -m pytest -q -n 2 --durations=5 tests
	@echo "--- the tests marked kaggle_image under the Kaggle image's versions ($(KVENV): $$($(KPY) -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'))"
	$(KPY) -m pytest -q -n 2 --dist loadfile -m kaggle_image --durations=5 tests

# The tests not marked slow, in the main venv only.
test-fast: $(STAMP) fonts
	$(VPY) -m pytest -q -n 2 -m "not slow" --durations=5 tests

# The embedded default: a small synthetic dataset (4 books of 12 pages, 5 test pages from a fifth
# book whose glyphs are 1.7x larger), then the whole chain with the CPU demo preset: fixed epochs,
# so every run on one machine gives the same figures. Rerunning resumes/skips finished stages.
DEMO ?= demo
demo: $(STAMP) fonts
	@test -f $(DEMO)/data/train.csv || $(VPY) -m kzlib.synth $(DEMO)/data --books 4 --pages-per-book 12 \
		--test-pages 5 --classes 200 --height 1200 --seed 3 --workers 2
	$(VPY) run_local.py --data $(DEMO)/data --work $(DEMO)/run --preset demo

clean-venv:
	rm -rf $(VENV) $(KVENV)

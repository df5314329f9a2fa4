# Two commands on a fresh machine:
#   make demo   - sets up .venv and runs `realtime demo`
#   make test   - sets up .venv (with training and test extras) and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# onnxruntime and onnxruntime-gpu share one package folder: choose with ORT=cpu|gpu.
ORT ?= cpu

.PHONY: demo test setup setup-test lint bench audio-server test-services

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.runtime-$(ORT): pyproject.toml setup.py | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[$(ORT)]'
	touch $@

# The tests include the 'serve' extra: they start a real Triton server (pytriton's ~55 MB wheel,
# a few seconds to install; the Triton tests take about 40 s).
$(VENV)/.test-$(ORT): pyproject.toml setup.py | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[$(ORT),train,dev,serve]'
	touch $@ $(VENV)/.runtime-$(ORT)

setup: $(VENV)/.runtime-$(ORT)
setup-test: $(VENV)/.test-$(ORT)

demo: setup
	$(VENV)/bin/realtime demo

test: setup-test test-services
	$(PY) -m pytest -q

# System pieces some tests use for real: a PulseAudio server (audio) and Xvfb + xdotool
# (the preview window). Best effort: without root/apt those tests skip with the reason.
test-services: audio-server
	@if ! command -v Xvfb >/dev/null 2>&1 || ! command -v xdotool >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends xvfb xdotool >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends xvfb xdotool >/dev/null 2>&1; } \
			|| echo "xvfb/xdotool could not be installed; the window test will skip"; \
		else echo "no root/apt: install xvfb and xdotool for the window test"; fi; \
	fi

lint: setup-test
	$(VENV)/bin/ruff check realtime export benchmarks tests
	$(VENV)/bin/ruff format --check realtime export benchmarks tests

bench: setup
	$(PY) benchmarks/run_all.py

# A real sound server for the audio tests (../shared/ENVIRONMENT.md, "Audio"); idempotent.
# Installs the packages when run as root with apt, starts PulseAudio with a null sink
# (vsink, its monitor remapped as the microphone vmic) unless one already answers.
# Without apt/root/pulseaudio it does nothing and the tests that need it skip.
AUDIO_PACKAGES := libportaudio2 pulseaudio pulseaudio-utils libasound2-plugins
audio-server:
	@if ! command -v pulseaudio >/dev/null 2>&1 || ! command -v pactl >/dev/null 2>&1 \
		|| ! ldconfig -p 2>/dev/null | grep -q 'libportaudio\.so\.2'; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing $(AUDIO_PACKAGES)"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(AUDIO_PACKAGES) >/dev/null 2>&1 \
			|| { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				--no-install-recommends $(AUDIO_PACKAGES) >/dev/null 2>&1; } \
			|| echo "audio packages could not be installed; the audio tests will skip"; \
		else echo "no root/apt: install $(AUDIO_PACKAGES) for the audio tests"; fi; \
	fi
	@if command -v pulseaudio >/dev/null 2>&1 && command -v pactl >/dev/null 2>&1 && ! pactl info >/dev/null 2>&1; then \
		pulseaudio -D --exit-idle-time=-1 --disallow-exit -n --load=module-native-protocol-unix \
			--load="module-null-sink sink_name=vsink rate=48000" \
			--load="module-remap-source master=vsink.monitor source_name=vmic" 2>/dev/null \
		&& pactl set-default-sink vsink && pactl set-default-source vsink.monitor \
		&& echo "PulseAudio started (sink vsink, microphone vmic)" \
		|| echo "PulseAudio did not start; the audio tests will skip"; \
	fi

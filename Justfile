# tokenspout tasks. `just serve` and `just test` set everything up on first use.

set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
bin := venv / "bin"

# List the recipes
default:
    @just --list

# Serve the default model (or pass flags: just serve --model path/to/model.gguf --port 9000)
serve *flags: setup
    {{ bin }}/tokenspout serve {{ flags }}

# Lint, type-check and run the whole test suite against the real model and a real server
test *pytest_args: setup browser
    {{ bin }}/tokenspout models pull
    {{ bin }}/ruff check .
    {{ bin }}/ruff format --check .
    {{ bin }}/mypy
    {{ bin }}/pytest {{ pytest_args }}

# Stream from a real server and compare with the bare llama.cpp loop measured in the same run
bench *flags: setup
    {{ bin }}/tokenspout models pull
    {{ bin }}/python -m bench {{ flags }}

# Create .venv and install tokenspout with its test tools (compiles llama.cpp once: ~9 min on 2 cores)
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x {{ bin }}/python ] || python3 -m venv {{ venv }}
    stamp={{ venv }}/.installed
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        {{ bin }}/python -m pip install --quiet --upgrade pip
        echo "installing tokenspout and its dependencies (llama-cpp-python compiles llama.cpp once; pip caches it)"
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" {{ bin }}/python -m pip install --editable '.[dev]'
        touch "$stamp"
    fi

# Install Debian's Chromium for the browser tests when it is missing
browser:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x /usr/bin/chromium ]; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium
    fi

# Format the code
fmt: setup
    {{ bin }}/ruff format .
    {{ bin }}/ruff check --fix .

# A few hundred mixed requests (both protocols, vanishing clients, bursts) and a leak check
soak *flags: setup
    {{ bin }}/tokenspout models pull
    {{ bin }}/python -m bench.soak {{ flags }}

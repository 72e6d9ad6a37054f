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
test *pytest_args: setup browser nginx
    {{ bin }}/tokenspout models pull
    {{ bin }}/tokenspout models pull qwen2.5-coder-0.5b
    {{ bin }}/ruff check .
    {{ bin }}/ruff format --check .
    {{ bin }}/mypy
    {{ bin }}/pytest {{ pytest_args }}

# Stream from a real server and compare with the bare llama.cpp loop measured in the same run
bench *flags: setup
    {{ bin }}/tokenspout models pull
    {{ bin }}/python -m bench {{ flags }}

# Build llama.cpp's own llama-server from the sources of our pinned llama-cpp-python, once (~15 min on
# 2 cores), so that `just bench` measures it side by side; cached in ~/.cache/tokenspout
llama-server: setup
    #!/usr/bin/env bash
    set -euo pipefail
    version=$({{ bin }}/python -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))")
    out="${XDG_CACHE_HOME:-$HOME/.cache}/tokenspout/llama-server-$version"
    if [ -x "$out/llama-server" ]; then echo "$out/llama-server"; exit 0; fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    {{ bin }}/python -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$version" -d "$work"
    tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    cmake -S "$work"/llama_cpp_python-*/vendor/llama.cpp -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
    cmake --build "$work/build" --target llama-server -j "$(nproc)"
    mkdir -p "$out"
    cp "$work/build/bin/llama-server" "$out/"
    echo "$out/llama-server"

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

# (Where systemd runs, Debian also enables its own nginx service on port 80; ours is a private one.)
# Install Debian's nginx for `just cluster` and the cluster tests when it is missing
nginx:
    #!/usr/bin/env bash
    set -euo pipefail
    if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nginx
    fi

# Other flags go to every replica: just cluster 3 --max-concurrent-requests 8. Ctrl-C stops them all.
# N replicas on loopback ports behind nginx on 127.0.0.1:8080 (deploy/nginx.conf), in the foreground
cluster n="2" *flags: setup nginx
    {{ bin }}/tokenspout models pull
    {{ bin }}/python -m deploy.cluster {{ n }} {{ flags }}

# Format the code
fmt: setup
    {{ bin }}/ruff format .
    {{ bin }}/ruff check --fix .

# A few hundred mixed requests (both protocols, vanishing clients, bursts) and a leak check
soak *flags: setup
    {{ bin }}/tokenspout models pull
    {{ bin }}/python -m bench.soak {{ flags }}

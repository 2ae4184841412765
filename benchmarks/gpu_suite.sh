#!/usr/bin/env bash
# The one-shot GPU suite (issue 10): on one GPU, in under 8 minutes, one table of
#   - offline tokenize, float16 batch 32 (--compile graphs) vs the reference's float32
#     one-at-a-time loop (benchmarks/bench_tokenize.py), as a speed ratio;
#   - float16 and bfloat16 token agreement with float32 (benchmarks/bench_precision.py), and
#     float32 --compile graphs against plain float32 (must be 100 %);
#   - a streaming sweep, 100/250/500/1000 sessions, partials off and on
#     (benchmarks/bench_stream.py): endpoint->segment p50/p95/p99, sessions lagging, GPU
#     utilisation, the server's capacity estimate (its /metrics gauge, n/a where the server
#     has none) vs the windows/s it served;
# all on full-size random Whisper-medium weights in the real formats (make-random-model).
#
# Usage:
#   benchmarks/gpu_suite.sh --prepare DIR    # here, with network and espeak-ng: wheels + speech
#   benchmarks/gpu_suite.sh --from DIR       # on the GPU machine (no network): install, run
#   benchmarks/gpu_suite.sh                  # a GPU machine with network: pip installs from PyPI
#   benchmarks/gpu_suite.sh --cpu-smoke --python PY   # CI: the same plumbing, tiny, on CPU
# Options: --out DIR (the JSON files and the table; default gpu-suite-out), --python PY (use
# this interpreter as it is: install nothing). The table is printed and written to
# OUT/table.md. Extra `serve` arguments: SERVE_ARGS="--workers 4 ..." in the environment.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$REPO/benchmarks
MODE=gpu FROM="" PREPARE="" OUT=gpu-suite-out PY=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --cpu-smoke) MODE=cpu; shift ;;
        --from) FROM=$2; shift 2 ;;
        --prepare) PREPARE=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --python) PY=$2; shift 2 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu_suite: unknown argument $1" >&2; exit 2 ;;
    esac
done
say() { echo "gpu_suite [$(date +%T)]: $*" >&2; }

# The packages the suite needs beyond what a CUDA PyTorch image holds (torch, numpy, tqdm,
# tiktoken, numba, einops, huggingface_hub, torchaudio): the project's own dependencies, the
# model extra's openai-whisper, and the reference (ichigo-asr, no deps + its two needs).
DEPS=(websockets==16.0 webrtcvad-wheels==2.0.14 soxr==0.5.0.post1 soundfile==0.13.1
      cffi==2.0.0 pycparser==2.23 more-itertools==10.8.0 openai-whisper==20250625
      vector-quantize-pytorch==1.6.22)
REFERENCE=ichigo-asr==0.1.1

if [[ -n $PREPARE ]]; then
    # Everything the GPU machine cannot fetch, for Python 3.12 on x86-64 Linux (its image).
    mkdir -p "$PREPARE/wheels" "$PREPARE/speech"
    PYPI=(python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12
          --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any
          -d "$PREPARE/wheels")
    for dep in "${DEPS[@]}" "$REFERENCE"; do
        # openai-whisper ships only as a source archive: build its (pure Python) wheel here.
        "${PYPI[@]}" "$dep" -q 2>/dev/null || python3 -m pip wheel -q --no-deps \
            -w "$PREPARE/wheels" "$dep"
    done
    # This package's own wheel, built from a copy (setuptools writes build/ where it builds).
    COPY=$(mktemp -d)
    tar -C "$REPO" --exclude=./.git --exclude=./.venv --exclude=./build \
        --exclude=./.gpu-suite -cf - . | tar -xf - -C "$COPY"
    python3 -m pip wheel -q --no-deps --no-build-isolation -w "$PREPARE/wheels" "$COPY"
    rm -rf "$COPY"
    "${PY:-python3}" "$BENCH/gpu_suite_speech.py" "$PREPARE/speech"
    say "prepared $PREPARE: $(ls "$PREPARE/wheels" | wc -l) wheels, $(du -sh "$PREPARE" | cut -f1)"
    exit 0
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
mkdir -p "$WORK"
if [[ -z $PY ]]; then
    # A venv on top of the image's Python: its CUDA torch is reused, nothing is downloaded
    # when --from gives the wheels.
    say "installing into $WORK/venv"
    python3 -m venv --system-site-packages "$WORK/venv"
    PY=$WORK/venv/bin/python
    if [[ -n $FROM ]]; then
        "$PY" -m pip install -q --no-index --no-deps --find-links "$FROM/wheels" \
            "${DEPS[@]}" "$REFERENCE"
        # This checkout as it is now; the wheel --prepare built only if the image's
        # setuptools cannot build it.
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation "$REPO" \
            || "$PY" -m pip install -q --no-index --no-deps --find-links "$FROM/wheels" \
                ichigo-stream
    else
        "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null \
            || "$PY" -m pip install -q torch  # PyPI's Linux torch wheel is the CUDA build
        "$PY" -m pip install -q "${DEPS[@]}"
        "$PY" -m pip install -q --no-deps "$REFERENCE"
        "$PY" -m pip install -q --no-deps "$REPO"
    fi
fi
SPEECH=${FROM:+$FROM/speech}
SPEECH=${SPEECH:-$WORK/speech}
[[ -d $SPEECH/tokenize ]] || "$PY" "$BENCH/gpu_suite_speech.py" "$SPEECH"
cd "$BENCH"  # the benchmarks import their sibling modules

if [[ $MODE == gpu ]]; then
    DEVICE=cuda DTYPE=float16 BATCH=32 COMPILE=graphs
    MODEL_ARGS=(--full medium) FILES=64 REPEATS=2 CLIPS=0 DTYPES=float16,bfloat16
    SWEEP=100,250,500,1000 DURATION=20 STAGGER=3 PROCS=""  # bench_stream's default
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
else
    DEVICE=cpu DTYPE=float32 BATCH=2 COMPILE=buckets
    MODEL_ARGS=(--width 384 --layers 1) FILES=2 REPEATS=1 CLIPS=2 DTYPES=bfloat16
    SWEEP=2 DURATION=8 STAGGER=0.5 PROCS=1
fi
# --workers where the server has it (the multi-process ingest), for the many sessions.
SERVE=(--compile "$COMPILE" --max-batch "$BATCH")
if [[ $MODE == gpu ]] && "$PY" -m ichigo_stream serve --help | grep -q -- --workers; then
    SERVE+=(--workers 4)
fi
read -r -a EXTRA <<< "${SERVE_ARGS:-}"
SERVE+=("${EXTRA[@]}")

say "making random weights (${MODEL_ARGS[*]}) in the real formats"
QUANTIZER=$WORK/quantizer.pth WHISPER=$WORK/whisper.pt
[[ -f $QUANTIZER ]] || "$PY" -m ichigo_stream make-random-model "$QUANTIZER" \
    --whisper-out "$WHISPER" "${MODEL_ARGS[@]}" >&2

say "offline tokenize: ours $DTYPE batch $BATCH vs the reference's loop"
"$PY" bench_tokenize.py --model "$QUANTIZER" --whisper "$WHISPER" --device "$DEVICE" \
    --dtype "$DTYPE" --batch-size "$BATCH" --compile "$COMPILE" --files "$FILES" \
    --repeats "$REPEATS" --speech-cache "$SPEECH/tokenize/en-us" --json "$OUT/tokenize.json" >&2

say "token agreement of $DTYPES with float32"
CLIP_ARGS=()
[[ $CLIPS -gt 0 ]] && CLIP_ARGS=(--clips "$CLIPS")
"$PY" bench_precision.py --model "$QUANTIZER" --whisper "$WHISPER" --device "$DEVICE" \
    --dtypes "$DTYPES" --compile "$COMPILE" --speech-cache "$SPEECH/tokenize" \
    "${CLIP_ARGS[@]}" --json "$OUT/precision.json" >&2

say "streaming sweep $SWEEP, partials off and on (serve ${SERVE[*]})"
STREAM_ARGS=(${PROCS:+--procs "$PROCS"})
for arg in "${SERVE[@]}"; do STREAM_ARGS+=("--server-arg=$arg"); done
"$PY" bench_stream.py --model "$QUANTIZER" --whisper "$WHISPER" --device "$DEVICE" \
    --dtype "$DTYPE" --sweep "$SWEEP" --partials both --duration "$DURATION" \
    --stagger "$STAGGER" --speech "$SPEECH"/stream/*.wav \
    --cache "$WORK/stream-cache" "${STREAM_ARGS[@]}" --json "$OUT/stream.json" >&2 || true

"$PY" gpu_suite_report.py "$OUT" | tee "$OUT/table.md"

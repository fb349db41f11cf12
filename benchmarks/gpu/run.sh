#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu/README.md):
#
#   benchmarks/gpu/run.sh          # GPU machine, offline: installs benchmarks/gpu/wheels (prepare.sh), then
#                                  # tests + srt vs TRL + generation in at most 8 minutes (--budget 480) from
#                                  # this script's start; writes benchmarks/RESULTS-gpu.{md,json} and, when
#                                  # $OUT is set, copies them, logs.tar.gz and run.log there
#   benchmarks/gpu/run.sh --dry    # the same script on CPU with a tiny model (what CI runs), within 2 minutes
#                                  # (--budget 120; a phase skipped for time fails it); writes
#                                  # benchmarks/RESULTS-gpu-dry.{md,json} (git-ignored) and benchmarks/gpu/logs/
#
# Other options go to benchmarks/gpu/bench_gpu.py (--budget S, --isolation process|shared, --results FILE).
# Environment: PYTHON (interpreter; GPU default python3, dry default .venv/bin/python), WHEELS (wheel folder).
# Exit status: 0 when every phase that ran passed (tests included), 1 otherwise.
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/../.."

DRY=0
BUDGET=
PASS=()
while (($#)); do
    case "$1" in
        --dry) DRY=1 ;;
        --budget) BUDGET=$2; shift ;;
        --budget=*) BUDGET=${1#*=} ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {print}' "$0"; exit 0 ;;
        *) PASS+=("$1") ;;
    esac
    shift
done
[[ -n "$BUDGET" ]] || { ((DRY)) && BUDGET=120 || BUDGET=480; }
DEADLINE=$((START + ${BUDGET%.*}))

if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    exec > >(tee -a "$OUT/run.log") 2>&1
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
say() { echo "[$(($(date +%s) - START))s] $*"; }

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif ((DRY)) && [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
WHEELS=${WHEELS:-benchmarks/gpu/wheels}
SITE=$(mktemp -d "${TMPDIR:-/tmp}/srt-gpu-site.XXXXXX")
trap 'rm -rf "$SITE"' EXIT
pip_target() { "$PY" -m pip install -q --root-user-action=ignore --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$@"; }

if ((DRY)); then
    say "dry run on CPU with $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
    # The checkout's own srt (the venv's editable install); only TRL, a benchmark-only dependency, may be missing.
    if ! "$PY" -c "import trl" 2>/dev/null; then
        TRL_PIN=$(grep -E '^trl==' benchmarks/gpu/requirements.txt)
        if compgen -G "$WHEELS/trl-*.whl" >/dev/null; then
            say "installing $TRL_PIN from $WHEELS (--no-index --no-deps)"
            pip_target "$WHEELS"/trl-*.whl || exit 1
        else
            say "installing $TRL_PIN from the package index (--no-deps; its dependencies are in requirements.lock)"
            "$PY" -m pip install -q --root-user-action=ignore --no-deps --no-compile --target "$SITE" "$TRL_PIN" || exit 1
        fi
        export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -P benchmarks/gpu/bench_gpu.py --dry --deadline "$DEADLINE" "${PASS[@]}"
    RC=$?
    say "dry run finished with exit status $RC"
    exit $RC
fi

# ---- GPU machine: no network; everything beyond the image comes from $WHEELS.
say "GPU run with $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])')); budget ${BUDGET} s"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "no wheels in $WHEELS: run benchmarks/gpu/prepare.sh on a networked machine first (and carry the folder)" >&2
    exit 1
fi
SRT_WHEEL=$(ls "$WHEELS"/srt-*.whl)
WANT=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['srt_tree_hash'])" "$WHEELS/BUILD_INFO.json" 2>/dev/null || echo none)
HAVE=$("$PY" benchmarks/gpu/tree_hash.py .)
if [[ "$WANT" != "$HAVE" ]]; then
    # The sources changed since prepare.sh: build srt's wheel here, offline, rather than measure old code.
    say "the srt wheel is stale (built from sources $WANT, this checkout is $HAVE): rebuilding it offline"
    BUILD=$(mktemp -d)
    if "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index -w "$BUILD" . >"$BUILD/pip.log" 2>&1; then
        SRT_WHEEL=$(ls "$BUILD"/srt-*.whl)
    else
        say "WARNING: offline rebuild failed ($(tail -1 "$BUILD/pip.log")); measuring the stale wheel $SRT_WHEEL"
    fi
fi
OTHERS=()
for w in "$WHEELS"/*.whl; do [[ $(basename "$w") == srt-* ]] || OTHERS+=("$w"); done
say "installing ${#OTHERS[@]} wheels + $(basename "$SRT_WHEEL") into $SITE (pip --no-index --no-deps)"
pip_target "${OTHERS[@]}" "$SRT_WHEEL" || exit 1
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
# srt must come from the wheel, not the checkout (-P keeps the working directory off sys.path).
"$PY" -P -c "
import srt, pydantic, torch, transformers, lightning, peft
assert srt.__file__.startswith('$SITE'), srt.__file__
print('imports ok: srt', srt.__version__, 'from', srt.__file__, '| torch', torch.__version__, '| transformers',
      transformers.__version__, '| lightning', lightning.__version__, '| peft', peft.__version__, '| cuda',
      torch.cuda.is_available())
try:
    import datasets, trl
    print('TRL', trl.__version__, '| datasets', datasets.__version__)
except Exception as exc:  # TRL's configurations will fail and say why; srt's still run
    print('WARNING: TRL does not import:', type(exc).__name__, exc)
" || exit 1
say "installed; starting the check"
"$PY" -P benchmarks/gpu/bench_gpu.py --deadline "$DEADLINE" "${PASS[@]}"
RC=$?
say "finished with exit status $RC"
exit $RC

#!/usr/bin/env bash
# Fill benchmarks/gpu/wheels/ with everything benchmarks/gpu/run.sh installs on the GPU machine, which
# has no network: the pinned wheels of benchmarks/gpu/requirements.txt for CPython 3.12 on manylinux
# x86_64, and a wheel of srt built from this checkout. Run it on a networked machine (any OS/Python:
# pip downloads for the target platform, not this one), before the GPU is available and again after
# srt changes (run.sh notices a stale srt wheel and rebuilds it there, offline).
#
#   benchmarks/gpu/prepare.sh            # -> benchmarks/gpu/wheels/ (git-ignored), about 15 MB
#   WHEELS=/some/dir benchmarks/gpu/prepare.sh
#
# It checks that the folder installs with `pip install --no-index --no-deps` for that platform, holds
# one version of each project, and stays under 60 MB (the device machine's working tree limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WHEELS=${WHEELS:-benchmarks/gpu/wheels}
LIMIT_MB=60
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform any)

mkdir -p "$WHEELS"
WHEELS=$(cd "$WHEELS" && pwd)
rm -f "$WHEELS"/*.whl "$WHEELS"/BUILD_INFO.json
echo "== downloading pinned wheels (cp312, manylinux x86_64) into $WHEELS"
"$PY" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$WHEELS" -r benchmarks/gpu/requirements.txt

echo "== building the srt wheel from this checkout"
# From a copy of the files git tracks or would track (what travels to the device machine), so the build
# leaves nothing (build/, *.egg-info) in the checkout.
SRC=$(mktemp -d)
TARGET=$(mktemp -d)
trap 'rm -rf "$SRC" "$TARGET"' EXIT
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [[ -f "$f" ]] && mkdir -p "$SRC/$(dirname "$f")" && cp -p "$f" "$SRC/$f"
done
"$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$SRC"

echo "== checking the folder"
"$PY" - "$WHEELS" "$LIMIT_MB" <<'EOF'
import json, re, subprocess, sys
from pathlib import Path

sys.path.insert(0, "benchmarks/gpu")
from tree_hash import srt_tree_hash

folder, limit_mb = Path(sys.argv[1]), float(sys.argv[2])
wheels = sorted(folder.glob("*.whl"))
projects = {}
for w in wheels:
    name = re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower()
    projects.setdefault(name, []).append(w.name)
dupes = {k: v for k, v in projects.items() if len(v) > 1}
if dupes:
    sys.exit(f"more than one version of a project (pip --no-index would refuse): {dupes}")
wanted = []
for line in Path("benchmarks/gpu/requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if line:
        wanted.append(re.sub(r"[-_.]+", "-", line.split("==")[0]).lower())
missing = [w for w in wanted + ["srt"] if w not in projects]
if missing:
    sys.exit(f"missing wheels: {missing}")
total = sum(w.stat().st_size for w in wheels)
for w in wheels:
    print(f"  {w.stat().st_size / 1e6:7.2f} MB  {w.name}")
print(f"  {total / 1e6:7.2f} MB  in all ({len(wheels)} wheels; limit {limit_mb:.0f} MB)")
if total > limit_mb * 1e6:
    sys.exit(f"the wheels take {total / 1e6:.1f} MB, over the {limit_mb:.0f} MB limit")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "srt", "plugins/srt_builtin", "setup.cfg"],
                            capture_output=True, text=True).stdout.strip())
(folder / "BUILD_INFO.json").write_text(json.dumps({
    "srt_wheel": projects["srt"][0], "srt_tree_hash": srt_tree_hash("."), "git_commit": commit,
    "uncommitted_srt_changes": dirty, "total_bytes": total, "wheels": [w.name for w in wheels],
}, indent=1) + "\n")
EOF

echo "== dry install for the GPU machine's platform (pip --no-index --no-deps, cp312 manylinux x86_64)"
"$PY" -m pip install -q --no-index --no-deps --no-compile "${PLATFORM[@]}" --target "$TARGET" "$WHEELS"/*.whl
echo "   installs: $(ls "$TARGET" | grep -c dist-info) distributions"
echo "ready: $WHEELS (run.sh installs it; name it in the device call's carry)"

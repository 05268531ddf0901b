#!/usr/bin/env bash
# Fills benchmarks/gpu_wheels/ (gitignored) with the wheels that benchmarks/gpu_check.sh installs on a GPU machine
# that has no network: `bash benchmarks/gpu_wheels.sh` here, where pip reaches PyPI, then carry the folder.
#
# The GPU machine's python3 already has torch, torchvision, Lightning (and with it torchmetrics,
# lightning-utilities, PyYAML, fsspec, tqdm, packaging), timm (huggingface_hub, safetensors) and transformers
# (tokenizers, regex, numpy); its image also lists scikit-learn, scipy, rich and pillow. So by default only
# pure-python wheels come: what setup.cfg needs beyond that (omegaconf, rich and its deps), the clip extra
# (open_clip_torch, ftfy, wcwidth), and setuptools for the `pip install -e .` build, which pip cannot fetch
# there. About 5 MiB; any Python 3.10+ can install them.
#
#   GPU_WHEELS_BINARY=1 bash benchmarks/gpu_wheels.sh   # also scikit-learn + scipy (about 50 MiB more), built
#                                                       # for GPU_WHEELS_PYTHON (default 3.12, the image's python3)
#   bash benchmarks/gpu_wheels.sh NAME==VERSION ...     # extra wheels (name each dependency too: --no-deps)
#
# Versions are pinned to those in this checkout's .venv (the ones the test suite passes with) where it has them.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=benchmarks/gpu_wheels
py=${PYTHON:-.venv/bin/python}
target=${GPU_WHEELS_PYTHON:-3.12}

# name, and the range setup.cfg (or the package needing it) asks for when .venv does not have it
pure=(
    "omegaconf>=2.3"
    "rich>=13" "markdown-it-py>=2.2" "mdurl>=0.1" "pygments>=2.13"
    "open_clip_torch>=2.24" "ftfy>=6" "wcwidth>=0.2"
    "setuptools>=70.1"
)
binary=("scikit-learn>=1.3" "scipy>=1.8" "joblib>=1.2" "threadpoolctl>=3.1" "narwhals>=1.0")

pinned() {  # the .venv's version of each requirement where it is in the requirement's range, else the requirement
    "$py" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

for given in sys.argv[1:]:
    requirement = Requirement(given)
    try:
        have = version(requirement.name)
    except PackageNotFoundError:
        print(given)
        continue
    # an install outside the range (setuptools 65 for ">=70.1") is not what the wheels must carry
    print(f"{requirement.name}=={have}" if requirement.specifier.contains(have, prereleases=True) else given)
EOF
}

wanted=("${pure[@]}")
[[ ${GPU_WHEELS_BINARY:-0} == 1 ]] && wanted+=("${binary[@]}")
mapfile -t requirements < <(pinned "${wanted[@]}")
requirements+=("$@")

rm -rf "$dest"
mkdir -p "$dest"
# --no-deps: each dependency is named above; resolving would pull torch and its CUDA libraries.
# The platform flags pick Linux x86_64 wheels for binary packages; pure-python wheels match any of them.
"$py" -m pip download --quiet --no-deps --only-binary=:all: --dest "$dest" \
    --implementation cp --python-version "$target" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    "${requirements[@]}"

ls -1 "$dest"
du -sh "$dest"

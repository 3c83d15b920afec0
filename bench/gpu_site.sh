#!/usr/bin/env bash
# The Python packages the app needs that a lent GPU machine lacks, packed to travel with the working tree.
#
# The device machine runs its image's python3 (3.12, torch, transformers, numpy, pandas, ...) and reaches no
# registry; it has no gradio, fastapi, pydantic or plotly, so `python app.py` (bench/app_gpu.py, the last part
# of bench/gpu_check.sh) cannot start there without them. Their wheels are about 47 MB, and a call sends at
# most 64 MiB with the working tree (23 MB), so this installs them here for that Python into a folder and packs
# it with xz (about 32 MB):
#     bash bench/gpu_site.sh             # writes .gpu-site/site.tar.xz (ignored by git), once per machine
# then the device call carries it (carry: [".gpu-site"]) and gpu_check.sh unpacks it onto PYTHONPATH there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# What the app imports beyond that image: gradio with its server and client, and plotly. typing_extensions too:
# pydantic needs a newer one than an image may hold (a newer one serves torch as well). narwhals (plotly's) and
# annotated_doc (fastapi's): the image has them, in versions that may be too old.
KEEP="gradio gradio_client hf_gradio fastapi starlette uvicorn pydantic pydantic_core annotated_types typing_inspection
      opentelemetry_api orjson python_multipart safehttpx semantic_version tomlkit groovy pydub brotli pytz plotly
      typing_extensions narwhals annotated_doc"
version() { $PY -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
GRADIO=$(version gradio); PLOTLY=$(version plotly)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
echo "downloading gradio${GRADIO:+==$GRADIO} and plotly${PLOTLY:+==$PLOTLY} with what they need (Python 3.12, x86-64)"
$PY -m pip download -q "${TARGET[@]}" -d "$TMP/wheels" "gradio${GRADIO:+==$GRADIO}" "plotly${PLOTLY:+==$PLOTLY}" 2>&1 \
  | grep -v "^WARNING: Location" || true
wheels=()
for name in $KEEP; do
  found=$(ls "$TMP/wheels" | grep -i "^${name}-[0-9]" || true)
  [ -n "$found" ] || { echo "no wheel of $name among the downloads" >&2; exit 1; }
  wheels+=("$TMP/wheels/$found")
done
$PY -m pip install -q --no-deps --no-compile "${TARGET[@]}" --target "$TMP/site" "${wheels[@]}" 2>&1 \
  | grep -v "^WARNING: Location" || true
mkdir -p .gpu-site
tar -cJf .gpu-site/site.tar.xz.part -C "$TMP/site" . && mv .gpu-site/site.tar.xz.part .gpu-site/site.tar.xz
echo "wrote .gpu-site/site.tar.xz ($(du -m .gpu-site/site.tar.xz | cut -f1) MB; ${#wheels[@]} packages)"

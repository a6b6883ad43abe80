#!/usr/bin/env bash
# One command on a fresh machine: make .venv, install the pinned requirements, run the main job.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m s4fusion_jax demo "$@"

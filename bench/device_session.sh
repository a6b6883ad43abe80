# One lent GPU machine, one command: bench.device_check's parity (at both precisions) and fuse
# for the chunked backend, the GPU training stage of the bundled model (configs/bundled.py:6, as
# many steps as the time allows; its log gives the train step's compile and speed), the bundled
# model's fuse of 1 and 4 pairs per call (scan "auto"), then the other backends' parity and fuse;
# each bounded so the whole ends within BUDGET seconds (default 555). Every measurement is
# printed as it is made.
#
# Prepare here (Python 3.12 wheels of what the machine's image lacks, bench/device_wheels.txt;
# the data and the fixture), from the repository's root:
#   mkdir -p .devcarry/whl && echo /.devcarry/ >> .git/info/exclude
#   P="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64"
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $P \
#       -d .devcarry/whl -r bench/device_wheels.txt
#   pip wheel --no-deps -w .devcarry/whl promise==2.3    # TFDS imports it; PyPI has no wheel
#   cp -r ../shared/data/roadscene_train ../shared/golden/golden_s4fusion_61x73.npz .devcarry/
# and run `bash bench/device_session.sh` there with .devcarry beside it (about 53 MB with the
# repository). What it writes to $OUT (default device_out/): log.txt; stage6.tgz (the stage's
# log, samples, validation and best weights); last.tar.* (its last checkpoint, when not its best).
START=$(date +%s); BUDGET=${BUDGET:-555}; OUT=${OUT:-device_out}; mkdir -p "$OUT"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
rm -rf /tmp/site /tmp/stage6
if [ -d .devcarry/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .devcarry/whl/*.whl || exit 3
fi
export PYTHONPATH=/tmp/site:$PWD
if ! [ -d ../shared/data/roadscene_train ]; then
  mkdir -p ../shared/data && cp -r .devcarry/roadscene_train ../shared/data/
fi
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__)" || exit 4
python3 -c "import jax; print(jax.devices())" || exit 4
G=.devcarry/golden_s4fusion_61x73.npz
echo "== device_check chunked, parity and fuse (left $(left) s)"
timeout 150 python3 -m bench.device_check --golden $G --backends chunked --steps 0 $DC_ARGS
# The stage's steps (a multiple of 50): at STEP_S seconds a step (0.67 s on the H200 of
# 2026-12-04, images/s of its first 40 steps), what leaves 260 s for start-up, the dataset,
# compiling (its train step took ~170 s there) and validating, and 60 s for the rest.
N=$(python3 -c "print(max(50, int(($(left) - 320) / ${STEP_S:-0.7} // 50 * 50)))")
echo "== stage 6: $N steps (left $(left) s)"
timeout $(( $(left) - 60 )) python3 train.py --config configs/bundled.py:6 --workdir /tmp/stage6 \
  --init_from s4fusion_jax/weights/s4fusion --config.num_steps=$N --noprogress $STAGE_ARGS
echo "stage 6: exit status $?"
if [ -d /tmp/stage6 ]; then
  tar czf "$OUT/stage6.tgz" -C /tmp/stage6 --exclude=checkpoints --exclude=tensorboard .
  LAST=$(ls /tmp/stage6/checkpoints | grep -E '^[0-9]+$' | sort -n | tail -1)
  [ -n "$LAST" ] && ! [ -d /tmp/stage6/best-$LAST ] && \
    tar cf - -C /tmp/stage6/checkpoints $LAST | split -b 15m - "$OUT/last.tar."
fi
echo "== fuse batches (left $(left) s)"
[ $(left) -gt 40 ] && timeout $(( $(left) / 2 )) python3 -m bench.device_check --golden "" \
  --backends auto --steps 0 ${FB_ARGS:---fuse_batches 1 4}
for backend in associative sequential; do
  echo "== device_check $backend, parity and fuse (left $(left) s)"
  [ $(left) -gt 30 ] && timeout $(( ($(left) - 5) / 2 + 5 )) \
    python3 -m bench.device_check --golden $G --backends $backend --steps 0 $DC_ARGS
done
echo "== done, left $(left) s"; date -u

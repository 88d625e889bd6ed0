#!/usr/bin/env bash
# Scaling run for a 16-core machine (the device tool's lent machine). Expects, carried into the
# tree: .ft/python3.13t.tar.xz (a slimmed free-threaded build, tools/../shared/tools/
# build-python-ft.sh with SLIM=1, __pycache__ removed), the in-place extension builds for
# cp313t and cp312, and .whl/ with orjson for cp312. Writes its reports to $OUT.
set -u
out=${OUT:-/tmp/out}
mkdir -p "$out" /opt/python3.13t
tar -xJf .ft/python3.13t.tar.xz -C /opt/python3.13t
pyft=/opt/python3.13t/bin/python3.13t
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONUNBUFFERED=1
{
  echo "== machine"; nproc; grep -m1 'model name' /proc/cpuinfo; python3 --version
  echo "== free-threaded 3.13t, stdlib json + ~20 us transform"
  PYTHONPATH=$PWD timeout 250 "$pyft" benchmarks/freethreading.py --messages 200000 --workers 1 2 4 8 16
  echo "== GIL 3.12, same workload"
  PYTHONPATH=$PWD:/tmp/site timeout 120 python3 benchmarks/freethreading.py --messages 100000 --workers 1 2 16
  echo "== GIL 3.12, orderedtask demo (orjson), 16 workers"
  PYTHONPATH=$PWD:/tmp/site timeout 60 python3 -m orderedtask demo --workers 16
} 2>&1 | tee "$out/device_bench.txt"

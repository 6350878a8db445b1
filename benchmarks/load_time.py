"""Time loading the embedded mmpt-tiny: cold (de-quantize GGUF, build the cache) and warm (cache reuse).

    python benchmarks/load_time.py            # uses a fresh temporary cache for the cold load

Prints seconds for each phase; the acceptance target is a warm load under 5 s.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MMPT_CACHE"] = tmp
        from mmpt.models import load

        t0 = time.perf_counter()
        load("mmpt-tiny")
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        load("mmpt-tiny")
        warm = time.perf_counter() - t0
    print(f"cold load (de-quantize + cache build): {cold:.1f} s")
    print(f"warm load (verified cache reuse):      {warm:.1f} s")
    return 0 if warm < 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Run one scenario in this process: `python -m benchmarks.worker CONFIG.json OUT.json` (used by __main__)."""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    config_path, out_path = argv
    with open(config_path) as f:
        cfg = json.load(f)
    from benchmarks.mtmd_peer import quiet_llama
    from benchmarks.scenarios import SCENARIOS

    quiet_llama()
    start = time.perf_counter()
    runs = SCENARIOS[cfg["scenario"]](cfg)
    with open(out_path, "w") as f:
        json.dump({"scenario": cfg["scenario"], "seconds": time.perf_counter() - start, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

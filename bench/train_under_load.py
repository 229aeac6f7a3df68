"""How long a shipped BERT's recipe trains while another CPU-bound process runs, and with what weights.

Starts a single-threaded busy loop (the competitor), then trains the recipe of the shipped model
named (`tiny`: `TinyRecipe()`, 2 threads; `tiny-aspects`: `ASPECTS_RECIPE`, 1 thread) in a fresh
child process under the OpenMP settings given, and prints seconds and whether the weights equal
the shipped ones.

    python bench/train_under_load.py [--model tiny|tiny-aspects] [--wait-policy PASSIVE|ACTIVE|default] [--no-competitor]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CHILD = r"""
import time, torch
from safetensors.torch import load_file
from gnorm_kernels.models.shipped_models import shipped_folder
from gnorm_kernels.models.tiny_bert import ASPECTS_RECIPE, TinyRecipe, train_tiny
NAME = {name!r}
start = time.perf_counter()
model, _, info = train_tiny(ASPECTS_RECIPE if NAME == "tiny-aspects" else TinyRecipe(), progress=False)
print("seconds", round(time.perf_counter() - start, 1), "loop", info["train_seconds"])
shipped = load_file(shipped_folder(NAME) / "model.safetensors")
state = model.state_dict()
same = shipped.keys() <= state.keys() and all(torch.equal(shipped[k], state[k]) for k in shipped)
print(f"weights equal to the shipped {{NAME}} model:", same)
"""
BUSY = "import time\nend = time.time() + 3600\nx = 0\nwhile time.time() < end:\n    x += 1\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "tiny-aspects"])
    parser.add_argument("--wait-policy", default="default", choices=["default", "PASSIVE", "ACTIVE"])
    parser.add_argument("--no-competitor", action="store_true")
    args = parser.parse_args()
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if args.wait_policy != "default":
        env["OMP_WAIT_POLICY"] = args.wait_policy
    busy = None if args.no_competitor else subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        time.sleep(2)
        print("load average at start", os.getloadavg()[0], flush=True)
        subprocess.run([sys.executable, "-c", CHILD.format(name=args.model)], env=env, check=True)
        print("load average at end", os.getloadavg()[0])
    finally:
        if busy is not None:
            busy.kill()


if __name__ == "__main__":
    main()

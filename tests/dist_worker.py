"""The worker that tests/test_distributed.py starts on every rank with torchrun.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py OUT

Each rank runs the same scenarios on its shard of the data (gloo, one thread) and saves what it
got to OUT/rank{r}.pt; rank 0 also writes the trajectories and the FSDP checkpoint. The test
compares all of it with single-process runs. The models, batches and scorer settings live here,
so the test builds its references from the same definitions.
"""

from __future__ import annotations

import copy
import os
import sys
import traceback
from pathlib import Path

import torch

SCORERS = {  # name -> (scorer, options)
    "gnorm/per_batch": ("gnorm", {"aggregation": "per_batch"}),
    "gnorm/per_example": ("gnorm", {"aggregation": "per_example"}),
    "gnorm/accumulated": ("gnorm", {"aggregation": "accumulated"}),
    "entropy": ("entropy", {}),
    "taylor": ("taylor", {"objective": "logits_norm"}),
    "random": ("random", {"seed": 3}),
}
FSDP_SCORERS = ("gnorm/per_batch", "gnorm/per_example", "gnorm/accumulated", "entropy", "taylor")
GREEDY = dict(ratio=0.5, heads_per_step=2, progress=False)
FSDP_GREEDY = dict(ratio=0.5, heads_per_step=1, progress=False)


def families() -> list[str]:
    """BERT, and a decoder family where decoder scoring is available."""
    from gnorm_kernels.scoring.gnorm import gnorm_scores
    from gnorm_kernels.testing import random_batches, tiny_random_model

    found = ["bert"]
    try:
        model = tiny_random_model("llama")
        gnorm_scores(model, random_batches(model, num_batches=1, batch_size=2, seq_len=4), aggregation="per_example")
        found.append("llama")
    except Exception:
        pass
    return found


def setup(family: str):
    """(model, calibration batches, evaluation batches) of a family: 5 and 3 batches, so that
    two ranks get shards of different sizes (3 + 2 and 2 + 1)."""
    from gnorm_kernels.testing import random_batches, tiny_random_model

    model = tiny_random_model(family, seed=0, initializer_range=0.2)
    calibration = random_batches(model, num_batches=5, batch_size=3, seq_len=10, seed=1)
    evaluation = random_batches(model, num_batches=3, batch_size=8, seq_len=10, seed=2)
    return model, calibration, evaluation


def fsdp_setup():
    """A BERT of 3 heads of size 6: 18 Q/K/V rows split 9 + 9, so head 1 straddles the shards."""
    from gnorm_kernels.testing import random_batches, tiny_random_model

    model = tiny_random_model("bert", num_heads=3, head_size=6, seed=1, initializer_range=0.2)
    return model, random_batches(model, num_batches=3, batch_size=3, seq_len=10, seed=4), \
        random_batches(model, num_batches=2, batch_size=8, seq_len=10, seed=5)


def score(model, batches, name):
    from gnorm_kernels.scoring.registry import get_scorer

    scorer, options = SCORERS[name]
    return get_scorer(scorer)(model, batches, **options)


class CountCollectives:
    """Counts torch.distributed.all_reduce calls inside the block (the reductions of a score)."""

    def __enter__(self):
        import torch.distributed as dist

        self.calls, self._real = 0, dist.all_reduce

        def counted(*args, **kwargs):
            self.calls += 1
            return self._real(*args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist

        dist.all_reduce = self._real


def expect_error(fn) -> str:
    try:
        fn()
    except Exception as err:  # what each rank saw
        return f"{type(err).__name__}: {err}"
    return "no error"


def run(out: Path) -> dict:
    from gnorm_kernels.engine.driver import greedy_prune
    from gnorm_kernels.engine.trajectory import Trajectory
    from gnorm_kernels.heads.masking import mask_heads
    from gnorm_kernels.parallel import distributed, fsdp
    from gnorm_kernels.scoring.baselines import random_scores

    results: dict = {"world": distributed.world_size(), "families": families(), "collectives": {}}
    for family in results["families"]:
        model, calibration, evaluation = setup(family)
        mine = distributed.shard(calibration)
        for name in SCORERS:
            with CountCollectives() as count:
                results[f"{family}/{name}"] = score(model, mine, name)
            results["collectives"][f"{family}/{name}"] = count.calls

    # greedy: an uninterrupted run, and one stopped after a step and resumed from its checkpoint
    model, calibration, evaluation = setup("bert")
    cal, ev = distributed.shard(calibration), distributed.shard(evaluation)
    greedy_prune(model, cal, ev, checkpoint=out / "greedy.json", **GREEDY)
    greedy_prune(model, cal, ev, checkpoint=out / "resumed.json", max_steps=1, **GREEDY)
    if distributed.is_main():
        results["interrupted_steps"] = len(Trajectory.load(out / "resumed.json").steps)
    greedy_prune(model, cal, ev, checkpoint=out / "resumed.json", **GREEDY)

    # FSDP2: the model sharded, the data not
    model, calibration, evaluation = fsdp_setup()
    sharded = fsdp.shard_model(copy.deepcopy(model))
    for name in FSDP_SCORERS:
        results[f"fsdp/{name}"] = score(sharded, calibration, name)
    trajectory = greedy_prune(sharded, calibration, evaluation, checkpoint=out / "fsdp.json", **FSDP_GREEDY)
    last = len(trajectory.steps) - 1
    mask = trajectory.head_mask_at(steps=last).float()
    with torch.no_grad(), mask_heads(sharded, mask):
        results["fsdp/masked_logits"] = sharded(**{k: v for k, v in evaluation[0].items() if k != "labels"}).logits
    fsdp.save_pruned_sharded(sharded, trajectory.pruned_heads_at(steps=last), out / "fsdp_model")

    # bad input: every rank raises, none hangs
    other = setup("bert")[0] if distributed.rank() == 0 else fsdp_setup()[0]
    results["error/models"] = expect_error(lambda: greedy_prune(other, cal, ev, **GREEDY))
    results["error/too_few"] = expect_error(lambda: distributed.shard(calibration[:1]))
    results["error/seeds"] = expect_error(lambda: random_scores(model, seed=distributed.rank()))
    results["error/sharded_twice"] = expect_error(lambda: fsdp.shard_model(sharded))
    return results


def main(out: str) -> int:
    from gnorm_kernels.parallel import distributed

    torch.set_num_threads(1)
    out = Path(out)
    distributed.init_from_env("cpu", timeout_s=120)
    try:
        results = run(out)
        torch.save(results, out / f"rank{distributed.rank()}.pt")
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1]))

"""GRAIN: intra-attention pruning with knowledge distillation (Yang et al., ACL 2023).

The pieces, each usable alone:

* `units`: query units, value units and FFN neurons; `Units` masks/scores; `mask_units`.
* `importance`: unit Taylor importance, its moving average, the structure regulariser, the global ranking.
* `schedule`: `DensitySchedule` (distil, cubic pruning ramp, distil).
* `distill`: L_CE, L_Hidden with identity-initialised maps, gradient separation.
* `shrink`: `GrainStructure`, `shrink_model`, `save_grain`, `load_grain`.
* `attention`: `UnevenSelfAttention`, the attention for heads of uneven sizes ("grouped" or "loop");
  `plan`: how its grouped path batches heads of similar size.

and the entry point `grain_prune(teacher, student, data, density=...)` in `prune`.
"""

from gnorm_kernels.grain.attention import UnevenSelfAttention
from gnorm_kernels.grain.distill import (
    Distiller,
    HiddenStateMaps,
    hidden_state_mse,
    separated_backward,
    soft_cross_entropy,
)
from gnorm_kernels.grain.importance import (
    ImportanceEMA,
    select_units,
    structure_regularize,
    unit_taylor_importance,
)
from gnorm_kernels.grain.plan import plan_groups
from gnorm_kernels.grain.prune import GrainReport, grain_prune
from gnorm_kernels.grain.schedule import DensitySchedule
from gnorm_kernels.grain.shrink import (
    GrainStructure,
    LayerStructure,
    grain_structure_of,
    load_grain,
    save_grain,
    set_attention_impl,
    shrink_model,
)
from gnorm_kernels.grain.units import UnitLayout, Units, mask_units, unit_layout

__all__ = [
    "grain_prune",
    "GrainReport",
    "Units",
    "UnitLayout",
    "unit_layout",
    "mask_units",
    "unit_taylor_importance",
    "ImportanceEMA",
    "structure_regularize",
    "select_units",
    "DensitySchedule",
    "soft_cross_entropy",
    "HiddenStateMaps",
    "hidden_state_mse",
    "Distiller",
    "separated_backward",
    "GrainStructure",
    "LayerStructure",
    "shrink_model",
    "save_grain",
    "load_grain",
    "set_attention_impl",
    "grain_structure_of",
    "UnevenSelfAttention",
    "plan_groups",
]

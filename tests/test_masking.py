import pytest
import torch

from gnorm_kernels.heads.families import head_layout
from gnorm_kernels.heads.masking import mask_heads
from gnorm_kernels.testing import FAMILIES, random_batches, tiny_random_model


def _inputs(model, seed=0):
    batch = random_batches(model, num_batches=1, seed=seed)[0]
    return {k: v for k, v in batch.items() if k != "labels"}


def _hook_count(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_all_ones_is_identity_and_zeros_change_logits(family, impl):
    model = tiny_random_model(family, attn_implementation=impl)
    inputs = _inputs(model)
    with torch.no_grad():
        base = model(**inputs).logits
        with mask_heads(model, torch.ones(head_layout(model).shape, dtype=torch.bool)):
            same = model(**inputs).logits
        mask = torch.ones(head_layout(model).shape)
        mask[0, 1] = 0
        with mask_heads(model, mask):
            changed = model(**inputs).logits
    torch.testing.assert_close(same, base)
    assert not torch.allclose(changed, base, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_equals_zeroing_the_head_output_columns(family):
    """Gating a head's context is the same as zeroing its columns of the output projection."""
    model = tiny_random_model(family)
    inputs = _inputs(model)
    layout = head_layout(model)
    mask = torch.ones(layout.shape)
    mask[1, 2] = 0
    with torch.no_grad():
        with mask_heads(model, mask):
            masked = model(**inputs).logits
        d = layout.head_size
        layout.blocks[1].output.weight[:, 2 * d:3 * d] = 0
        zeroed = model(**inputs).logits
    torch.testing.assert_close(masked, zeroed, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_gates_are_differentiable(family):
    model = tiny_random_model(family)
    inputs = _inputs(model)
    mask = torch.ones(head_layout(model).shape, requires_grad=True)
    with mask_heads(model, mask) as gates:
        loss = model(**inputs).logits.pow(2).sum()
    loss.backward()
    assert gates is mask
    assert mask.grad is not None and mask.grad.shape == mask.shape
    assert (mask.grad != 0).sum() >= mask.numel() - 1  # every head influences the output


def test_fractional_gate_scales_the_head():
    model = tiny_random_model("bert")
    inputs = _inputs(model)
    layout = head_layout(model)
    mask = torch.ones(layout.shape)
    mask[0, 3] = 0.25
    with torch.no_grad():
        with mask_heads(model, mask):
            gated = model(**inputs).logits
        d = layout.head_size
        layout.blocks[0].output.weight[:, 3 * d:4 * d] *= 0.25
        scaled = model(**inputs).logits
    torch.testing.assert_close(gated, scaled, rtol=1e-5, atol=1e-6)


def test_hooks_removed_on_exit_and_on_error():
    model = tiny_random_model("bert")
    before = _hook_count(model)
    with mask_heads(model, torch.ones(2, 4)):
        assert _hook_count(model) == before + 2
    assert _hook_count(model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with mask_heads(model, torch.ones(2, 4)):
            raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_wrong_shape_and_type_errors():
    model = tiny_random_model("bert")
    with pytest.raises(ValueError, match=r"\[2, 4\].*got \[4, 2\]"):
        with mask_heads(model, torch.ones(4, 2)):
            pass
    with pytest.raises(TypeError, match="torch.Tensor"):
        with mask_heads(model, [[1, 1, 1, 1], [1, 1, 1, 1]]):
            pass
    assert _hook_count(model) == 0


def test_a_gate_that_overflows_the_models_dtype_is_refused():
    """1e39 is finite in float64 but inf in float32: refused, not turned into an inf gate."""
    model = tiny_random_model("bert")
    mask = torch.ones(2, 4, dtype=torch.float64)
    mask[1, 2] = 1e39
    with pytest.raises(ValueError, match=r"\[\[1, 2\]\].*overflow the model's torch.float32"):
        with mask_heads(model, mask):
            pass
    assert _hook_count(model) == 0
    mask[1, 2] = 1e30  # large but finite in float32: a valid (if odd) gate
    with mask_heads(model, mask) as gates:
        assert gates[1, 2] == 1e30
    with mask_heads(model.double(), torch.full((2, 4), 1e39, dtype=torch.float64)):
        pass  # a float64 model holds it

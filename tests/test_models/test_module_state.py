"""No module-level mutable state: the Swin shift-mask cache lives on each block of each model
(two models in one process, and a copy of one, keep their own), bounded in size."""
import copy

import torch

import mmvpt.models.utils.attention as attention

from tests.helpers.tiny_models import build


def shifted_blocks(model):
    return [block for block in model.blocks if any(block.shift_size)]


def test_each_swin_block_keeps_its_own_shift_masks():
    assert not [name for name, value in vars(attention).items()
                if isinstance(value, (dict, list, set)) and not name.startswith('__')]
    torch.manual_seed(0)
    vpt = dict(type='mmvpt.VPT', num_tokens=2)  # without a method, timm's blocks run as they are
    first, second = build(vpt, backbone='swin').eval(), build(vpt, backbone='swin').eval()
    with torch.no_grad():
        first(torch.randn(1, 3, 32, 32))
        copied = copy.deepcopy(first)
        second(torch.randn(1, 3, 32, 32))
    blocks = shifted_blocks(first)
    assert blocks and all(len(block.shift_masks) == 1 for block in blocks)
    for block, other, clone in zip(blocks, shifted_blocks(second), shifted_blocks(copied)):
        assert other.shift_masks is not block.shift_masks
        assert clone.shift_masks is not block.shift_masks
        (key, mask), = block.shift_masks.items()
        assert torch.equal(mask, block.get_attn_mask(torch.zeros(1, key[0], key[1], 1)))
    # a new size is one more entry, up to the bound; the latest sizes are kept
    # (first stage: a map of size / 4, a new window-padded size every 16 pixels)
    sizes = [32 + 16 * i for i in range(attention.SHIFT_MASKS_PER_BLOCK + 2)]
    with torch.no_grad():
        for size in sizes:
            first(torch.randn(1, 3, size, size))
    assert len(blocks[0].shift_masks) == attention.SHIFT_MASKS_PER_BLOCK
    assert [key[0] for key in blocks[0].shift_masks] == [size // 4 for size in sizes[-8:]]
    assert all(len(block.shift_masks) <= attention.SHIFT_MASKS_PER_BLOCK for block in blocks)
    assert not hasattr(shifted_blocks(second)[0], 'shift_masks') or \
        len(shifted_blocks(second)[0].shift_masks) == 1


def test_a_probe_is_an_object_of_one_model():
    """An open probe sees the attention of the model it was given only, and leaves nothing
    on it when closed."""
    from mmvpt.models.utils import probe_attention
    torch.manual_seed(0)
    probed, other = build(dict(type='mmvpt.VPT', num_tokens=2)), build()
    images = torch.randn(1, 3, 32, 32)
    seen = []
    with torch.no_grad(), probe_attention(probed, lambda kind, record: seen.append(record)):
        other(images)
        assert seen == []
        probed(images)
        assert [r['attn'] for r in seen] == [block.attn for block in probed.blocks]
    assert not [m for m in probed.modules() if 'attention_probes' in m.__dict__]
    with torch.no_grad():
        probed(images)
    assert len(seen) == len(probed.blocks)

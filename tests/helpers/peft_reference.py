"""Hugging Face peft's LoRA / DoRA on a timm ViT holding a prompted model's weights: the
reference the LoRA-family methods (LoRA, DoRA) are compared with, tensor for tensor.

peft updates whole linears. Row targets ('q', 'k', 'v': each its own update of its rows of
the qkv projection) are one peft update of the qkv linear whose A stacks theirs and whose B
is block-diagonal (zero elsewhere), so it computes the same; each of our tensors is then a
block of one of peft's (:func:`peft_blocks`)."""
import timm
from peft import LoraConfig, get_peft_model

from mmvpt.models.adapters.base import QKV_ROWS
from mmvpt.models.adapters.lora import target_rows

from .tiny_models import TINY_VIT

#: where each target's linear sits in a timm block
LINEARS = {'qkv': 'attn.qkv', 'proj': 'attn.proj', 'fc1': 'mlp.fc1', 'fc2': 'mlp.fc2'}


def timm_twin(model):
    """A plain timm ViT of ``model``'s (a tiny PromptedViT's) arch and dtype, with its weights."""
    twin = timm.create_model(model.arch, pretrained=False, num_classes=0, img_size=model.img_size,
                             **TINY_VIT['arch_cfg'])
    twin.to(next(model.parameters()))
    twin.load_state_dict(model.vit.state_dict())
    return twin


def peft_twin(model, use_dora=False, dropout=0.):
    """peft's ``LoraConfig(use_dora=...)`` on :func:`timm_twin` of ``model`` at the linears its
    LoRA / DoRA method targets (rank and scale as the method's), its tensors as peft
    initialises them; :func:`peft_blocks` pairs them with ours."""
    method = model.prompt
    rows = [t for t in QKV_ROWS if t in method.targets]
    linears = sorted({'qkv' if t in QKV_ROWS else t for t in method.targets})
    # the row targets' updates side by side in one update of qkv, at the same scale
    patterns = {'qkv': len(rows) * method.rank} if rows else {}
    modules = '|'.join(LINEARS[name].replace('.', r'\.') for name in linears)
    config = LoraConfig(
        r=method.rank, lora_alpha=method.alpha, lora_dropout=dropout, use_dora=use_dora,
        target_modules=rf'blocks\.\d+\.({modules})',
        rank_pattern={r'attn\.' + k: v for k, v in patterns.items()},
        alpha_pattern={r'attn\.' + k: v * method.scale for k, v in patterns.items()})
    return get_peft_model(timm_twin(model), config)


def peft_blocks(method, peft_model):
    """{(layer, target): (peft's linear, our B's output rows in it, our A's rank rows in it)}:
    block l's ``target`` update is peft's ``lora_A[ranks]``, ``lora_B[rows, ranks]`` and, for
    DoRA, ``lora_magnitude_vector[rows]``."""
    rows = [t for t in QKV_ROWS if t in method.targets]
    blocks = {}
    for layer, block in enumerate(peft_model.base_model.model.blocks):
        for target in method.targets:
            linear = block.get_submodule(LINEARS['qkv' if target in QKV_ROWS else target])
            ranks = slice(None)
            if target in QKV_ROWS:
                index = rows.index(target)
                ranks = slice(index * method.rank, (index + 1) * method.rank)
            blocks[layer, target] = (linear, target_rows(linear.base_layer, target), ranks)
    return blocks

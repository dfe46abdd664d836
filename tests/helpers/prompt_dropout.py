"""Records the masks of the prompt dropout a model draws in train mode, so a test can feed
the same dropped prompts to a reference forward."""
import torch.nn.functional as F

from mmvpt.models.utils import attention as attention_module

#: a rate no backbone dropout of the tests uses (theirs are 0), so only prompt draws match
PROMPT_DROPOUT = 0.5


def record_prompt_dropout(monkeypatch, rate=PROMPT_DROPOUT):
    """Wraps ``F.dropout`` (the real draw still happens) and returns the list that receives
    each prompt draw's keep-mask (True where kept), in the order of the draws."""
    masks = []
    dropout = F.dropout

    def recording(input, p=0.5, training=True, inplace=False):
        out = dropout(input, p, training, inplace)
        if training and p == rate:
            masks.append(out.detach() != 0)
        return out
    monkeypatch.setattr(F, 'dropout', recording)
    return masks


def dropped(prompts, mask, rate=PROMPT_DROPOUT):
    """What a recorded draw makes of ``prompts``: kept elements scaled by 1 / (1 - rate)."""
    return prompts * mask / (1 - rate)


def masks_per_draw(mask):
    """A recorded mask as (number of masks, P, D): 1 for a batch-shared draw, B per sample."""
    return mask.reshape(-1, *mask.shape[-2:])


def spy_folded_cross_attention(monkeypatch):
    """Returns the list that gets one entry per call of CVPT's folded cross-attention, so a
    test knows which path its forward took."""
    calls = []
    folded = attention_module._folded_cross_attention
    monkeypatch.setattr(attention_module, '_folded_cross_attention',
                        lambda *args: calls.append(1) or folded(*args))
    return calls

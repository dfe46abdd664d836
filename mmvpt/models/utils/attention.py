"""Attention of timm's ``Attention`` (ViT) and ``WindowAttention`` (Swin) modules, with
the extras prompt methods need.

Every function reuses the module's own projections (no copies of weights) and runs the
attention itself through ``F.scaled_dot_product_attention``.

Analysis tools read what these functions compute through :func:`probe_attention`: while a
probe is open, each call also forms its attention probabilities from the very queries and
keys it attends with and hands them over. Without a probe nothing extra is computed.
"""
from functools import partial
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition, window_reverse

_IDENTITY = nn.Identity()
class AttentionProbe:
    """Calls ``callback(kind, record)`` for every attention ``model`` computes while the probe
    is open (``with probe_attention(model, callback):``):

    - ``'self'`` (:func:`self_attention`): ``attn`` (the module), ``probs`` (B, H, N, K)
      over the keys [``num_before`` extra, the N tokens, ``num_after`` extra], ``output``
      (B, N, C) after the output projection;
    - ``'cross'`` (:func:`cross_attention`): ``attn``, ``probs`` (B, H, N, P) over the
      prompts, ``output`` (B, N, C);
    - ``'reinforced'`` (iVPT): ``method``, ``layer``, ``indices`` (B, k) image tokens.

    Probabilities are formed without a graph; records hold tensors of this forward only. The
    probe is an object its user holds: while open, it is listed on the model's own modules
    (their ``attention_probes``), so another model, or the same code in another thread of
    work, is not probed.
    """

    def __init__(self, model, callback):
        self.model = model
        self.callback = callback

    def __enter__(self):
        for module in self.model.modules():
            module.attention_probes = (*getattr(module, 'attention_probes', ()), self.callback)
        return self

    def __exit__(self, *exc_info):
        for module in self.model.modules():
            probes = tuple(p for p in getattr(module, 'attention_probes', ())
                           if p is not self.callback)
            if probes:
                module.attention_probes = probes
            elif 'attention_probes' in module.__dict__:
                del module.attention_probes


def probe_attention(model, callback):
    """An :class:`AttentionProbe` of ``model`` to open with ``with``."""
    return AttentionProbe(model, callback)


def report_probe(owner, kind, **record):
    """Hands ``record`` to the probes open on the module ``owner`` (nothing happens without
    one)."""
    for callback in getattr(owner, 'attention_probes', ()):
        callback(kind, record)


def _probabilities(q, k, scale, mask=None):
    """softmax(q k^T * scale) in float32 without a graph, (B, H, N, K); ``mask`` (bool,
    broadcast to that shape) False where a query may not attend."""
    with torch.no_grad():
        scores = (q.float() * scale) @ k.float().transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float('-inf'))
        return scores.softmax(-1)


def _part(attn, name):
    """An optional part of a timm attention (``WindowAttention`` has no q/k/out norms)."""
    return getattr(attn, name, _IDENTITY)


def _widths(attn):
    """(heads, head dim, attention width) of a timm attention module."""
    width = attn.qkv.out_features // 3
    return attn.num_heads, width // attn.num_heads, width


def project_kv(attn, tokens):
    """Keys and values of ``tokens`` (b, P, C) through ``attn``'s own qkv projection, each
    (b, H, P, d); the query rows of the projection are not computed."""
    heads, head_dim, width = _widths(attn)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    kv = F.linear(tokens, weight[width:], None if bias is None else bias[width:])
    k, v = kv.view(tokens.shape[0], -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return _part(attn, 'k_norm')(k), v


def run_op(op, name, module, x):
    """``module(x)``, or through ``op(name, module, x)`` when a method adapts the frozen
    operations (:meth:`~mmvpt.models.prompts.base.PromptMethod.adapt`)."""
    return module(x) if op is None else op(name, module, x)


def mlp_forward(mlp, x, op=None):
    """timm ``Mlp.forward`` with its two linears through :func:`run_op`."""
    x = mlp.drop1(mlp.act(run_op(op, 'fc1', mlp.fc1, x)))
    return mlp.drop2(run_op(op, 'fc2', mlp.fc2, mlp.norm(x)))


def _expand_batch(t, batch_size):
    """(H, L, d) or (1|B, H, L, d) -> (B, H, L, d) as a view."""
    if t.dim() == 3:
        t = t.unsqueeze(0)
    return t.expand(batch_size, -1, -1, -1)


def _as_dtype(t, dtype):
    """``t`` in ``dtype``, without an op when it already is (ops cost launches per step)."""
    return t if t.dtype == dtype else t.to(dtype)


def num_keys(keys_values):
    """How many keys an optional (keys, values) pair holds."""
    return 0 if keys_values is None else keys_values[0].shape[-2]


def join_kv(first, second):
    """One (keys, values) pair out of two optional ones, each (H, L, d) or (1|B, H, L, d),
    ``first``'s keys first."""
    if first is None or second is None:
        return first if second is None else second
    batch = max(t.shape[0] if t.dim() == 4 else 1 for t in first + second)
    return tuple(torch.cat([_expand_batch(a, batch), _expand_batch(b, batch)], dim=2)
                 for a, b in zip(first, second))


def self_attention(attn, x, before=None, after=None, key_mask=None, cls_row=False, op=None):
    """timm ``Attention.forward`` plus extra keys/values and the CLS attention row.

    Args:
        attn: a timm ``Attention`` module (its qkv, norms, proj and dropouts are used).
        x: (B, N, C) normalised tokens.
        before, after: optional (keys, values), each (H, L, d) or (1|B, H, L, d), joined
            to the projected keys and values in head space (they skip W_k / W_v), before or
            after the token keys: E²VPT's key-value prompts, and the keys and values of
            prompt tokens that are not in the sequence. Only the tokens of ``x`` query.
        key_mask: optional (B, num_keys) bool over the keys [before, tokens, after], False
            for keys no query may attend to (the prompts a task pruned when tasks of
            different pruning share a batch).
        cls_row: also return the attention of the first query (CLS) to every key,
            softmax over all keys and mean over heads, (B, num_keys). It is one
            (1 x d) @ (d x keys) product per head; no full attention matrix is formed.
        op: the qkv and output projections through ``op`` (:func:`run_op`).

    Returns:
        (B, N, C) outputs after the projection, and the CLS row or None.
    """
    B, N, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = run_op(op, 'qkv', attn.qkv, x).reshape(B, N, 3, heads, head_dim).permute(
        2, 0, 3, 1, 4).unbind(0)
    k = attn.k_norm(k)
    if before is not None or after is not None:
        # The joined keys and values are new tensors. A query of its own (one copy) lets
        # the qkv output go after the joins; saved for backward as a view of that output,
        # the query would keep its key/value part alive too. In the tokens' dtype: float32
        # prompts would promote every joined key and value to float32 under autocast.
        q = q.contiguous()
        before, after = (None if kv is None
                         else tuple(_as_dtype(_expand_batch(t, B), k.dtype) for t in kv)
                         for kv in (before, after))
        parts = [kv for kv in (before, (k, v), after) if kv is not None]
        k, v = (torch.cat(tensors, dim=2) for tensors in zip(*parts))
    q = attn.q_norm(q)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.)
    row = None
    if cls_row:
        # Used only to rank tokens, so it needs no graph; in float32 also under mixed
        # precision, where bf16 would reorder near-equal tokens.
        with torch.autocast(q.device.type, enabled=False):
            row = _probabilities(q[:, :, :1], k, attn.scale, mask).mean(1)[:, 0]
    out = out.transpose(1, 2).reshape(B, N, attn.attn_dim)
    out = attn.proj_drop(run_op(op, 'proj', attn.proj, attn.norm(out)))
    if getattr(attn, 'attention_probes', None):
        report_probe(attn, 'self', attn=attn, probs=_probabilities(q, k, attn.scale, mask),
                     output=out.detach(), num_before=num_keys(before), num_after=num_keys(after))
    return out, row


class CrossAttentionPrompts(NamedTuple):
    """The prompt side of a cross-attention (:func:`cross_attention_prompts`), formed once
    per batch (or per task) and shared by the samples that use those prompts.

    Plain form: ``keys``, ``values`` (b, H, P, d). Folded form (``folded``): ``keys`` are
    the prompt keys through W_q, ``values`` the prompt values through W_o, each
    (b, H * P, C), and ``key_bias`` (b, 1, H * P) the query bias's share, or None.
    """
    keys: torch.Tensor
    values: torch.Tensor
    key_bias: Optional[torch.Tensor] = None
    folded: bool = False


def cross_attention_prompts(attn, x, prompts):
    """The prompt side of :func:`cross_attention` for ``prompts`` (b, P, C): keys and
    values through ``attn``'s projections or, where it pays (:func:`_fold_pays`), the
    folded products. ``x`` (B, N, C), the tokens that will attend, decides the form."""
    k, v = project_kv(attn, prompts)
    if not _fold_pays(attn, x, prompts, k):
        return CrossAttentionPrompts(k, v)
    # Per head h, q_h k_h^T = x (k_h W_q,h)^T + b_q,h k_h^T and sum_h a_h v_h W_o,h = a (v W_o)
    # with v_h W_o,h a (P, C) matrix per head.
    b, heads, P, head_dim = k.shape
    C = x.shape[-1]
    weight, bias = attn.qkv.weight, attn.qkv.bias
    width = _widths(attn)[2]
    w_q = weight[:width].view(heads, head_dim, C)
    keys_in = torch.einsum('bhpd,hdc->bhpc', k * attn.scale, w_q).reshape(b, heads * P, C)
    w_o = attn.proj.weight.view(C, heads, head_dim)
    values_out = torch.einsum('bhpd,chd->bhpc', v, w_o).reshape(b, heads * P, C)
    key_bias = None
    if bias is not None:
        b_q = bias[:width].view(heads, 1, head_dim)
        key_bias = (b_q * attn.scale * k).sum(-1).reshape(b, 1, heads * P)
    return CrossAttentionPrompts(keys_in, values_out, key_bias, folded=True)


def cross_attention(attn, x, prompts):
    """Queries from the token stream, keys and values from prompts, with ``attn``'s weights.

    softmax(q(x) k(p)^T / sqrt(d)) v(p), then the output projection. The prompt side
    (:func:`cross_attention_prompts`) is formed once per batch for batch-shared prompts
    (b = 1), so per sample only the queries and the attention remain; for few prompts the
    query and output projections are folded into it, which makes them nearly free.

    Args:
        attn: a timm ``Attention`` module: the block's own (weight sharing) or a copy.
        x: (B, N, C) tokens (CVPT applies no norm to them).
        prompts: :class:`CrossAttentionPrompts` with b = 1 or B.
    """
    if prompts.folded:
        return _folded_cross_attention(attn, x, prompts)
    B, N, C = x.shape
    heads, head_dim, width = _widths(attn)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(x, weight[:width], None if bias is None else bias[:width])
    q = _part(attn, 'q_norm')(q.view(B, N, heads, head_dim).transpose(1, 2))
    k, v = prompts.keys, prompts.values
    out = F.scaled_dot_product_attention(q, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
    out = out.transpose(1, 2).reshape(B, N, width)
    out = attn.proj(_part(attn, 'norm')(out))
    if getattr(attn, 'attention_probes', None):
        report_probe(attn, 'cross', attn=attn, probs=_probabilities(q, k, attn.scale),
                     output=out.detach())
    return out


def _fold_pays(attn, x, prompts, k):
    """Whether the folded form is the faster one: on a CPU, when it costs fewer FLOPs. Per
    sample and block, the plain form costs 2NC^2 + 2NPC multiply-adds forward and about as
    much backward (frozen projections need input gradients only); the folded form 2NPHC
    forward and twice that backward when the prompts train (the prompt-side products need
    gradients too). A CPU step follows those FLOPs (ViT-B/16 P=10, batch 8, CPU: folded
    0.92x the plain form's step in float32, 0.87x under bfloat16 autocast). A GPU step does
    not: the plain form's one large projection and fused attention beat the folded form's
    skinny per-sample products and its softmax over P (H200, bf16, batch 64: folded at P=10
    50 ms a step, plain at P=200 34 ms)."""
    if x.device.type != 'cpu':
        return False
    if not (isinstance(_part(attn, 'q_norm'), nn.Identity)
            and isinstance(_part(attn, 'norm'), nn.Identity)):
        return False
    num_prompts, (heads, _, width) = prompts.shape[1], _widths(attn)
    trains = torch.is_grad_enabled() and (prompts.requires_grad or k.requires_grad)
    if trains:  # 6NPHC < 4NC^2 + 6NPC
        return 3 * num_prompts * (heads - 1) < 2 * width
    return num_prompts * (heads - 1) < width  # 2NPHC < 2NC^2 + 2NPC


def _folded_cross_attention(attn, x, prompts):
    """Cross-attention with W_q and W_o moved to the prompt side (see
    :func:`cross_attention_prompts`): per sample the tokens meet the prompt-side products
    in two (N, C) x (C, H * P) products, and no (B, H, N, C) tensor is made."""
    B, N, C = x.shape
    keys_in, values_out, key_bias, _ = prompts
    heads = _widths(attn)[0]
    P = keys_in.shape[1] // heads
    if keys_in.shape[0] == 1:  # batch-shared prompts: plain (B * N, C) x (C, H * P) products
        keys_in, values_out = keys_in[0], values_out[0]
    scores = torch.matmul(x, keys_in.transpose(-1, -2))  # (B, N, H * P)
    if key_bias is not None:
        scores = scores + key_bias
    probs = scores.view(B, N, heads, P).softmax(dim=-1).view(B, N, heads * P)
    out = torch.matmul(probs, values_out)
    if attn.proj.bias is not None:
        out = out + attn.proj.bias
    if getattr(attn, 'attention_probes', None):
        report_probe(attn, 'cross', attn=attn,
                     probs=probs.detach().float().view(B, N, heads, P).transpose(1, 2),
                     output=out.detach())
    return out


# Shifted-window masks of a Swin block, by input size, device and dtype, kept on the block
# itself (its ``shift_masks`` attribute: each model, and each copy, has its own). timm's
# blocks with dynamic_mask (PromptedSwin's: any input size) rebuild theirs every forward,
# though they depend on the sizes only, never on parameters.
SHIFT_MASKS_PER_BLOCK = 8  # input sizes can vary (whole-image test): keep the latest few


def _shift_mask(block, shifted):
    """The block's (nW, N, N) shifted-window mask (0 / -100) for the padded, shifted
    (B, Hp, Wp, C) map, or None for a block without shift; built once per size and kept in
    ``block.shift_masks``."""
    if not getattr(block, 'dynamic_mask', False):
        return block.attn_mask
    if not any(block.shift_size):
        return None
    if torch.compiler.is_compiling():  # no Python-side state in a traced graph
        return block.get_attn_mask(shifted)
    key = (shifted.shape[1], shifted.shape[2], shifted.device, shifted.dtype,
           tuple(block.window_size), tuple(block.shift_size))
    masks = getattr(block, 'shift_masks', None)
    if masks is None:
        masks = block.shift_masks = {}  # a plain attribute: not a buffer, never saved
    mask = masks.pop(key, None)
    if mask is None:
        # Not an inference tensor even if first built under inference_mode: later training
        # steps use it too.
        with torch.inference_mode(False), torch.no_grad():
            mask = block.get_attn_mask(shifted)
        if len(masks) >= SHIFT_MASKS_PER_BLOCK:
            masks.pop(next(iter(masks)))  # the least recently used
    masks[key] = mask  # (re)inserted last: the most recently used
    return mask


def window_attention(block, x, grid, before=None, after=None, key_mask=None, num_prompts=0,
                     op=None):
    """timm ``SwinTransformerBlock._attn`` (shifted windows, relative-position bias, shift
    mask) with prompts that every window attends to.

    Prompt keys carry neither the relative-position bias nor the shift mask (zero padding of
    both), and prompt queries are neither biased nor masked.

    Args:
        block: a timm ``SwinTransformerBlock``.
        x: (B, P + H * W, C) normalised tokens: ``num_prompts`` (P) prompt tokens that join
            every window as queries and keys (VPT-shallow's; their outputs are averaged over
            the windows), then the ``grid`` (H, W) map, row by row.
        before, after: optional (keys, values), each (H, E, d) or (1|B, H, E, d), in head
            space, joined to every window's keys before or after them, as in
            :func:`self_attention`: E²VPT's key-value prompts, and the projected prompts of
            a block whose prompt outputs are never used.
        key_mask: optional (B, num_keys) bool over a window's keys [before, prompts, window
            tokens, after], False for keys no query may attend to.
        op: the qkv and output projections through ``op`` (:func:`run_op`).

    Returns:
        (B, P + H * W, C) outputs, laid out as ``x``.
    """
    B, _, C = x.shape
    H, W = grid
    P = num_prompts
    window, shift = block.window_size, block.shift_size
    has_shift = any(shift)
    image = x[:, P:].reshape(B, H, W, C)
    shifted = torch.roll(image, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if has_shift else image
    pad_h = (window[0] - H % window[0]) % window[0]
    pad_w = (window[1] - W % window[1]) % window[1]
    shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
    _, Hp, Wp, _ = shifted.shape
    windows = window_partition(shifted, window).view(-1, block.window_area, C)
    mask = _shift_mask(block, shifted)
    prompt_out = None
    if before is None and after is None and not P and op is None:
        out = block.attn(windows, mask=mask)
    else:
        out, prompt_out = _prompted_window_attention(block.attn, windows, mask, x[:, :P], before,
                                                     after, key_mask, op)
    out = window_reverse(out.view(-1, window[0], window[1], C), window, Hp, Wp)[:, :H, :W]
    if has_shift:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    out = out.reshape(B, H * W, C)
    return out if prompt_out is None else torch.cat([prompt_out, out], dim=1)


def position_bias(attn, op=None):
    """timm ``WindowAttention._get_rel_pos_bias``: its table looked up by relative position,
    (1, H, N, N); through ``op`` (:func:`run_op`) as operation ``'position_bias'`` on the
    (1, entries, H) table, which a method may change (BitFit's ``position_bias``): then
    (1 | B, H, N, N)."""
    if op is None:
        return attn._get_rel_pos_bias()
    return op('position_bias', partial(lookup_position_bias, attn),
              attn.relative_position_bias_table[None])


def lookup_position_bias(attn, tables):
    """(T, entries, H) relative-position tables -> (T, H, N, N) window biases."""
    N = attn.window_area
    return tables[:, attn.relative_position_index.view(-1)].view(
        -1, N, N, tables.shape[-1]).permute(0, 3, 1, 2)


def _prompted_window_attention(attn, windows, mask, prompts, before, after, key_mask=None, op=None):
    """``WindowAttention.forward`` over (B * nW, N, C) windows plus (B, P, C) prompt
    tokens and extra keys/values; see :func:`window_attention`."""
    num_windows_total, N, C = windows.shape
    B, P = prompts.shape[:2]
    num_windows = num_windows_total // B
    heads, head_dim, width = _widths(attn)
    bias = position_bias(attn, op)  # (1 | B, H, N, N)
    if op is not None:  # a method's operations see each sample's tokens: (B, nW * N, C)
        per_sample_op = op

        def op(name, module, t):
            return per_sample_op(name, module, t.reshape(B, -1, t.shape[-1])).reshape(
                *t.shape[:-1], -1)
    q, k, v = run_op(op, 'qkv', attn.qkv, windows).reshape(-1, N, 3, heads, head_dim).permute(
        2, 0, 3, 1, 4).unbind(0)

    def per_window(t):  # (H, L, d) or (1|B, H, L, d) -> (B * nW, H, L, d), in q's dtype
        t = _expand_batch(_as_dtype(t, q.dtype), B)
        return t.unsqueeze(1).expand(-1, num_windows, -1, -1, -1).reshape(-1, *t.shape[1:])

    if P:  # projected once per sample, then shared by its windows
        pq, pk, pv = (per_window(t) for t in run_op(op, 'qkv', attn.qkv, prompts).reshape(
            B, P, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0))
        q, k, v = (torch.cat([p, t], dim=2) for p, t in ((pq, q), (pk, k), (pv, v)))
    elif before is not None or after is not None:  # see self_attention: frees the qkv output
        q = q.contiguous()
    parts = [tuple(per_window(t) for t in kv) if kv is not None else None for kv in (before, after)]
    if any(part is not None for part in parts):
        k, v = (torch.cat(tensors, dim=2) for tensors in zip(
            *[kv for kv in (parts[0], (k, v), parts[1]) if kv is not None]))
    E_before, E_after = num_keys(before), num_keys(after)

    # Relative-position bias and shift mask over the window tokens only, zeros elsewhere:
    # (1 | B, 1 | nW, H, P + N, keys), expanded to the windows only where it differs by them.
    bias = bias.unsqueeze(1)
    if mask is not None:
        bias = bias + mask[:, None]
    key_start = E_before + P
    padded = bias.new_zeros(*bias.shape[:3], P + N, E_before + P + N + E_after)
    padded[..., P:, key_start:key_start + N] = bias
    if key_mask is not None:  # per sample: -inf on the keys it may not attend to
        key_bias = padded.new_zeros(B, padded.shape[-1]).masked_fill_(~key_mask, float('-inf'))
        padded = padded + key_bias[:, None, None, None]
    if padded.shape[:2] == (1, 1):
        padded = padded[0]  # the same for every window of every sample
    else:
        padded = padded.expand(B, num_windows, -1, -1, -1).reshape(-1, *padded.shape[2:])
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=padded, dropout_p=attn.attn_drop.p if attn.training else 0.)
    out = out.transpose(1, 2).reshape(-1, P + N, width)
    prompt_out = None
    if P:  # the mean over windows first: the projection is linear
        prompt_out = attn.proj_drop(run_op(op, 'proj', attn.proj,
                                           out[:, :P].reshape(B, num_windows, P, width).mean(1)))
    return attn.proj_drop(run_op(op, 'proj', attn.proj, out[:, P:])), prompt_out

"""Attention of timm's ``Attention`` (ViT) and ``WindowAttention`` (Swin) modules, with
the extras prompt methods need.

Every function reuses the module's own projections (no copies of weights) and runs the
attention itself through ``F.scaled_dot_product_attention``.

Analysis tools read what these functions compute through :func:`probe_attention`: while a
probe is open, each call also forms its attention probabilities from the very queries and
keys it attends with and hands them over. Without a probe nothing extra is computed.
"""
import weakref
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import window_partition, window_reverse

_IDENTITY = nn.Identity()
_PROBES = []


@contextmanager
def probe_attention(callback):
    """Calls ``callback(kind, record)`` for every attention computed inside the block:

    - ``'self'`` (:func:`self_attention`): ``attn`` (the module), ``probs`` (B, H, N, K)
      over the keys [``num_before`` extra, the N tokens, ``num_after`` extra], ``output``
      (B, N, C) after the output projection;
    - ``'cross'`` (:func:`cross_attention`): ``attn``, ``probs`` (B, H, N, P) over the
      prompts, ``output`` (B, N, C);
    - ``'reinforced'`` (iVPT): ``method``, ``layer``, ``indices`` (B, k) image tokens.

    Probabilities are formed without a graph; records hold tensors of this forward only.
    """
    _PROBES.append(callback)
    try:
        yield
    finally:
        _PROBES.remove(callback)


def report_probe(kind, **record):
    """Hands ``record`` to the open probes (nothing happens without one)."""
    for callback in list(_PROBES):
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


def _expand_batch(t, batch_size):
    """(H, L, d) or (1|B, H, L, d) -> (B, H, L, d) as a view."""
    if t.dim() == 3:
        t = t.unsqueeze(0)
    return t.expand(batch_size, -1, -1, -1)


def _as_dtype(t, dtype):
    """``t`` in ``dtype``, without an op when it already is (ops cost launches per step)."""
    return t if t.dtype == dtype else t.to(dtype)


def join_kv(first, second):
    """One (keys, values) pair out of two optional ones, each (H, L, d) or (1|B, H, L, d),
    ``first``'s keys first."""
    if first is None or second is None:
        return first if second is None else second
    batch = max(t.shape[0] if t.dim() == 4 else 1 for t in first + second)
    return tuple(torch.cat([_expand_batch(a, batch), _expand_batch(b, batch)], dim=2)
                 for a, b in zip(first, second))


def self_attention(attn, x, before=None, after=None, cls_row=False, key_mask=None):
    """timm ``Attention.forward`` plus extra keys/values and the CLS attention row.

    Args:
        attn: a timm ``Attention`` module (its qkv, norms, proj and dropouts are used).
        x: (B, N, C) normalised tokens.
        before, after: optional (keys, values), each (H, L, d) or (1|B, H, L, d), joined
            to the projected keys and values in head space (they skip W_k / W_v), before or
            after the token keys: E²VPT's key-value prompts, and the keys and values of
            prompt tokens that are not in the sequence. Only the tokens of ``x`` query.
        cls_row: also return the attention of the first query (CLS) to every key,
            softmax over all keys and mean over heads, (B, num_keys). It is one
            (1 x d) @ (d x keys) product per head; no full attention matrix is formed.
        key_mask: optional (B, num_keys) bool, False for keys no query may attend to (the
            prompts a task pruned when tasks of different pruning share a batch).
    """
    B, N, _ = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    k = attn.k_norm(k)
    if before is not None or after is not None:
        # The joined keys and values are new tensors. A query of its own (one copy) lets
        # the qkv output go after the joins; saved for backward as a view of that output,
        # the query would keep its key/value part alive too. In the tokens' dtype: float32
        # prompts would promote every joined key and value to float32 under autocast.
        q = q.contiguous()
        before, after = (None if kv is None else tuple(_as_dtype(_expand_batch(t, B), k.dtype) for t in kv)
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
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    if _PROBES:
        report_probe('self', attn=attn, probs=_probabilities(q, k, attn.scale, mask), output=out.detach(),
                     num_before=0 if before is None else before[0].shape[2],
                     num_after=0 if after is None else after[0].shape[2])
    return out, row


def cross_attention(attn, x, prompts, tasks=None):
    """Queries from the token stream, keys and values from prompts, with ``attn``'s weights.

    softmax(q(x) k(p)^T / sqrt(d)) v(p), then the output projection. With a batch-shared
    ``prompts`` of shape (1, P, C) the prompt keys/values are computed once for the batch.

    For few prompts the query and output projections are folded into the prompt side
    (see :func:`_folded_cross_attention`), which makes them nearly free.

    Args:
        attn: a timm ``Attention`` module: the block's own (weight sharing) or a copy.
        x: (B, N, C) tokens (CVPT applies no norm to them).
        prompts: (1 or B, P, C); with ``tasks``, (T, P, C): one set per task.
        tasks: optional (B,) task index per sample: the prompt-side work is done once per
            task, then gathered per sample.
    """
    B, N, C = x.shape
    heads, head_dim, width = _widths(attn)
    k, v = project_kv(attn, prompts)
    if tasks is not None and k.shape[0] == 1:  # one task: batch-shared prompts
        tasks = None
    if _fold_pays(attn, x, prompts, k):
        return _folded_cross_attention(attn, x, k, v, tasks)
    if tasks is not None:
        k, v = k[tasks], v[tasks]
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(x, weight[:width], None if bias is None else bias[:width])
    q = _part(attn, 'q_norm')(q.view(B, N, heads, head_dim).transpose(1, 2))
    out = F.scaled_dot_product_attention(q, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
    out = out.transpose(1, 2).reshape(B, N, width)
    out = attn.proj(_part(attn, 'norm')(out))
    if _PROBES:
        report_probe('cross', attn=attn, probs=_probabilities(q, k, attn.scale), output=out.detach())
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
    if not (isinstance(_part(attn, 'q_norm'), nn.Identity) and isinstance(_part(attn, 'norm'), nn.Identity)):
        return False
    num_prompts, (heads, _, width) = prompts.shape[1], _widths(attn)
    trains = torch.is_grad_enabled() and (prompts.requires_grad or k.requires_grad)
    if trains:  # 6NPHC < 4NC^2 + 6NPC
        return 3 * num_prompts * (heads - 1) < 2 * width
    return num_prompts * (heads - 1) < width  # 2NPHC < 2NC^2 + 2NPC


def _folded_cross_attention(attn, x, k, v, tasks=None):
    """Cross-attention with W_q and W_o moved to the prompt side.

    Per head h, q_h k_h^T = x (k_h W_q,h)^T + b_q,h k_h^T and
    sum_h a_h v_h W_o,h = a (v W_o) with v_h W_o,h a (P, C) matrix per head. Both prompt-side
    products are formed once per batch (b = 1 for batch-shared prompts); per sample the
    tokens meet them in two (N, C) x (C, H * P) products, and no (B, H, N, C) tensor is made.

    Args:
        attn: timm ``Attention`` (no q/scale norm).
        x: (B, N, C) tokens.
        k, v: (b, H, P, d) prompt keys and values, b = 1 or B, or T with ``tasks``.
        tasks: optional (B,) task per sample: the prompt-side products are formed per task
            and gathered per sample.
    """
    B, N, C = x.shape
    b, heads, P, head_dim = k.shape
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
    if tasks is not None:
        keys_in, values_out, key_bias = (None if t is None else t[tasks]
                                         for t in (keys_in, values_out, key_bias))
    elif b == 1:  # batch-shared prompts: plain (B * N, C) x (C, H * P) products
        keys_in, values_out = keys_in[0], values_out[0]
    scores = torch.matmul(x, keys_in.transpose(-1, -2))  # (B, N, H * P)
    if key_bias is not None:
        scores = scores + key_bias
    probs = scores.view(B, N, heads, P).softmax(dim=-1).view(B, N, heads * P)
    out = torch.matmul(probs, values_out)
    if attn.proj.bias is not None:
        out = out + attn.proj.bias
    if _PROBES:
        report_probe('cross', attn=attn, probs=probs.detach().float().view(B, N, heads, P).transpose(1, 2),
                     output=out.detach())
    return out


# Shifted-window masks per Swin block, by input size, device and dtype. timm's blocks with
# dynamic_mask (PromptedSwin's: any input size) rebuild theirs every forward, though they
# depend on the sizes only, never on parameters. Weak keys: a block's masks go with it.
_SHIFT_MASKS = weakref.WeakKeyDictionary()
_SHIFT_MASKS_PER_BLOCK = 8  # input sizes can vary (whole-image test): keep the latest few


def _shift_mask(block, shifted):
    """The block's (nW, N, N) shifted-window mask (0 / -100) for the padded, shifted
    (B, Hp, Wp, C) map, or None for a block without shift; built once per size."""
    if not getattr(block, 'dynamic_mask', False):
        return block.attn_mask
    if not any(block.shift_size):
        return None
    if torch.compiler.is_compiling():  # no Python-side state in a traced graph
        return block.get_attn_mask(shifted)
    key = (shifted.shape[1], shifted.shape[2], shifted.device, shifted.dtype,
           tuple(block.window_size), tuple(block.shift_size))
    masks = _SHIFT_MASKS.setdefault(block, {})
    mask = masks.pop(key, None)
    if mask is None:
        # Not an inference tensor even if first built under inference_mode: later training
        # steps use it too.
        with torch.inference_mode(False), torch.no_grad():
            mask = block.get_attn_mask(shifted)
        if len(masks) >= _SHIFT_MASKS_PER_BLOCK:
            masks.pop(next(iter(masks)))  # the least recently used
    masks[key] = mask  # (re)inserted last: the most recently used
    return mask


def window_attention(block, x, extra_kv=None, kv_first=True, prompts=None, extra_mask=None):
    """timm ``SwinTransformerBlock._attn`` (shifted windows, relative-position bias, shift
    mask) with prompts that every window attends to.

    Prompt keys carry neither the relative-position bias nor the shift mask (zero padding of
    both), and prompt queries are neither biased nor masked.

    Args:
        block: a timm ``SwinTransformerBlock``.
        x: (B, H, W, C) normalised tokens.
        extra_kv: optional (keys, values), each (H, E, d) or (b, H, E, d) with b = 1 or B,
            in head space: E²VPT's key-value prompts, or the projected prompts of a block
            whose prompt outputs are never used. Before the window's keys if ``kv_first``.
        prompts: optional (B, P, C) normalised prompt tokens that join every window as
            queries and keys (VPT-shallow); their outputs are averaged over the windows.
        extra_mask: optional (B, E) bool, False for extra keys no query may attend to.

    Returns:
        (B, H, W, C) outputs, and the prompts' (B, P, C) outputs or None.
    """
    B, H, W, C = x.shape
    window, shift = block.window_size, block.shift_size
    has_shift = any(shift)
    shifted = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2)) if has_shift else x
    pad_h = (window[0] - H % window[0]) % window[0]
    pad_w = (window[1] - W % window[1]) % window[1]
    shifted = F.pad(shifted, (0, 0, 0, pad_w, 0, pad_h))
    _, Hp, Wp, _ = shifted.shape
    windows = window_partition(shifted, window).view(-1, block.window_area, C)
    mask = _shift_mask(block, shifted)
    prompt_out = None
    if extra_kv is None and prompts is None:
        out = block.attn(windows, mask=mask)
    else:
        out, prompt_out = _prompted_window_attention(block.attn, windows, mask, B, extra_kv,
                                                     kv_first, prompts, extra_mask)
    out = window_reverse(out.view(-1, window[0], window[1], C), window, Hp, Wp)[:, :H, :W]
    if has_shift:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out, prompt_out


def _prompted_window_attention(attn, windows, mask, batch_size, extra_kv, kv_first, prompts,
                               extra_mask=None):
    """``WindowAttention.forward`` over (B * nW, N, C) windows plus prompt keys/values
    (and prompt queries); see :func:`window_attention`."""
    num_windows_total, N, C = windows.shape
    B, num_windows = batch_size, num_windows_total // batch_size
    heads, head_dim, width = _widths(attn)
    q, k, v = attn.qkv(windows).reshape(-1, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def per_window(t):  # (H, L, d) or (1|B, H, L, d) -> (B * nW, H, L, d), in q's dtype
        t = _expand_batch(_as_dtype(t, q.dtype), B)
        return t.unsqueeze(1).expand(-1, num_windows, -1, -1, -1).reshape(-1, *t.shape[1:])

    P = E = 0
    if prompts is not None:  # projected once per sample, then shared by its windows
        P = prompts.shape[1]
        pq, pk, pv = (per_window(t) for t in attn.qkv(prompts).reshape(
            B, P, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0))
        q, k, v = (torch.cat([p, t], dim=2) for p, t in ((pq, q), (pk, k), (pv, v)))
    if extra_kv is not None:
        if prompts is None:  # see self_attention: a query of its own frees the qkv output
            q = q.contiguous()
        ek, ev = (per_window(t) for t in extra_kv)
        E = ek.shape[2]
        k = torch.cat([ek, k] if kv_first else [k, ek], dim=2)
        v = torch.cat([ev, v] if kv_first else [v, ev], dim=2)

    # Relative-position bias and shift mask over the window tokens only, zeros elsewhere.
    bias = attn._get_rel_pos_bias()  # (1, H, N, N)
    if mask is not None:
        bias = bias + mask.unsqueeze(1)  # (nW, H, N, N)
    key_start = P + (E if kv_first else 0)
    padded = bias.new_zeros(bias.shape[0], heads, P + N, E + P + N)
    padded[:, :, P:, key_start:key_start + N] = bias
    if extra_mask is not None:  # per sample: -inf on the extra keys it may not attend to
        key_bias = padded.new_zeros(B, E + P + N)
        extra_start = 0 if kv_first else P + N
        key_bias[:, extra_start:extra_start + E].masked_fill_(~extra_mask, float('-inf'))
        padded = (padded.unsqueeze(0) + key_bias[:, None, None, None]).expand(
            B, num_windows, -1, -1, -1).reshape(-1, *padded.shape[1:])
    elif mask is not None:
        padded = padded.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(-1, *padded.shape[1:])
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=padded, dropout_p=attn.attn_drop.p if attn.training else 0.)
    out = out.transpose(1, 2).reshape(-1, P + N, width)
    prompt_out = None
    if P:  # the mean over windows first: the projection is linear
        prompt_out = attn.proj_drop(attn.proj(out[:, :P].reshape(B, num_windows, P, width).mean(1)))
    return attn.proj_drop(attn.proj(out[:, P:])), prompt_out

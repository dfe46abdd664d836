"""Attention of a timm ``Attention`` module, with the two extras prompt methods need.

Both functions reuse the module's own projections (no copies of weights) and run the
attention itself through ``F.scaled_dot_product_attention``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _expand_batch(t, batch_size):
    """(H, L, d) or (1|B, H, L, d) -> (B, H, L, d) as a view."""
    if t.dim() == 3:
        t = t.unsqueeze(0)
    return t.expand(batch_size, -1, -1, -1)


def self_attention(attn, x, extra_kv=None, kv_first=True, cls_row=False):
    """timm ``Attention.forward`` plus prompt keys/values and the CLS attention row.

    Args:
        attn: a timm ``Attention`` module (its qkv, norms, proj and dropouts are used).
        x: (B, N, C) normalised tokens.
        extra_kv: optional (keys, values), each (H, L, d) or (B, H, L, d), joined to the
            projected keys and values in head space (they skip W_k / W_v), before the
            token keys if ``kv_first`` else after them. Queries are never prompted.
        cls_row: also return the attention of the first query (CLS) to every key,
            softmax over all keys and mean over heads, (B, num_keys). It is one
            (1 x d) @ (d x keys) product per head; no full attention matrix is formed.
    """
    B, N, _ = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if extra_kv is not None:
        pk, pv = (_expand_batch(t, B) for t in extra_kv)
        k = torch.cat([pk, k] if kv_first else [k, pk], dim=2)
        v = torch.cat([pv, v] if kv_first else [v, pv], dim=2)
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.)
    row = None
    if cls_row:
        # Used only to rank tokens, so it needs no graph.
        with torch.no_grad():
            row = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(-1).mean(1)[:, 0]
    out = out.transpose(1, 2).reshape(B, N, attn.attn_dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    return out, row


def cross_attention(attn, x, prompts):
    """Queries from the token stream, keys and values from prompts, with ``attn``'s weights.

    softmax(q(x) k(p)^T / sqrt(d)) v(p), then the output projection. With a batch-shared
    ``prompts`` of shape (1, P, C) the prompt keys/values are computed once for the batch.

    For few prompts the query and output projections are folded into the prompt side
    (see :func:`_folded_cross_attention`), which makes them nearly free.

    Args:
        attn: a timm ``Attention`` module: the block's own (weight sharing) or a copy.
        x: (B, N, C) tokens (CVPT applies no norm to them).
        prompts: (1 or B, P, C).
    """
    B, N, C = x.shape
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.attn_dim
    weight, bias = attn.qkv.weight, attn.qkv.bias
    kv = F.linear(prompts, weight[width:], None if bias is None else bias[width:])
    k, v = kv.view(prompts.shape[0], -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    k = attn.k_norm(k)
    if _fold_pays(attn, prompts, k):
        return _folded_cross_attention(attn, x, k, v)
    q = F.linear(x, weight[:width], None if bias is None else bias[:width])
    q = attn.q_norm(q.view(B, N, heads, head_dim).transpose(1, 2))
    out = F.scaled_dot_product_attention(q, k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
    out = out.transpose(1, 2).reshape(B, N, width)
    return attn.proj(attn.norm(out))


def _fold_pays(attn, prompts, k):
    """Whether folding costs fewer FLOPs. Per sample and block, the plain form costs
    2NC^2 + 2NPC multiply-adds forward and about as much backward (frozen projections need
    input gradients only); the folded form 2NPHC forward and twice that backward when the
    prompts train (the prompt-side products need gradients too)."""
    if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.norm, nn.Identity)):
        return False
    num_prompts, heads, width = prompts.shape[1], attn.num_heads, attn.attn_dim
    trains = torch.is_grad_enabled() and (prompts.requires_grad or k.requires_grad)
    if trains:  # 6NPHC < 4NC^2 + 6NPC
        return 3 * num_prompts * (heads - 1) < 2 * width
    return num_prompts * (heads - 1) < width  # 2NPHC < 2NC^2 + 2NPC


def _folded_cross_attention(attn, x, k, v):
    """Cross-attention with W_q and W_o moved to the prompt side.

    Per head h, q_h k_h^T = x (k_h W_q,h)^T + b_q,h k_h^T and
    sum_h a_h v_h W_o,h = a (v W_o) with v_h W_o,h a (P, C) matrix per head. Both prompt-side
    products are formed once per batch (b = 1 for batch-shared prompts); per sample the
    tokens meet them in two (N, C) x (C, H * P) products, and no (B, H, N, C) tensor is made.

    Args:
        attn: timm ``Attention`` (no q/scale norm).
        x: (B, N, C) tokens.
        k, v: (b, H, P, d) prompt keys and values, b = 1 or B.
    """
    B, N, C = x.shape
    b, heads, P, head_dim = k.shape
    weight, bias = attn.qkv.weight, attn.qkv.bias
    w_q = weight[:attn.attn_dim].view(heads, head_dim, C)
    keys_in = torch.einsum('bhpd,hdc->bhpc', k * attn.scale, w_q).reshape(b, heads * P, C)
    w_o = attn.proj.weight.view(C, heads, head_dim)
    values_out = torch.einsum('bhpd,chd->bhpc', v, w_o).reshape(b, heads * P, C)
    if b == 1:  # batch-shared prompts: plain (B * N, C) x (C, H * P) products
        keys_in, values_out = keys_in[0], values_out[0]
    scores = torch.matmul(x, keys_in.transpose(-1, -2))  # (B, N, H * P)
    if bias is not None:
        b_q = bias[:attn.attn_dim].view(heads, 1, head_dim)
        scores = scores + (b_q * attn.scale * k).sum(-1).reshape(b, 1, heads * P)
    probs = scores.view(B, N, heads, P).softmax(dim=-1).view(B, N, heads * P)
    out = torch.matmul(probs, values_out)
    if attn.proj.bias is not None:
        out = out + attn.proj.bias
    return out

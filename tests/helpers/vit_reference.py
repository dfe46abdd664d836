"""Plain re-statements of the methods' equations, for tests: explicit attention matrices,
explicit loops, no shared code with mmvpt's forward."""
import math

import torch


def heads(t, num_heads):
    B, N, C = t.shape
    return t.reshape(B, N, num_heads, C // num_heads).transpose(1, 2)


def merge(t):
    B, H, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, H * d)


def attention(attn, x, kv=None):
    """Self-attention of ``x``; ``kv`` (keys, values) of shape (H, L, d) join in head space,
    before the tokens' keys.
    Returns the output and the (B, H, N, keys) attention matrix."""
    H, C = attn.num_heads, x.shape[-1]
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(C, dim=-1)
    q, k, v = heads(q, H), heads(k, H), heads(v, H)
    if kv is not None:
        pk, pv = (t.unsqueeze(0).expand(x.shape[0], -1, -1, -1) for t in kv)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    a = (q @ k.transpose(-1, -2) / math.sqrt(C // H)).softmax(-1)
    return merge(a @ v) @ attn.proj.weight.T + attn.proj.bias, a


def cross_attention(attn, x, prompts):
    """softmax(q(x) k(P)^T / sqrt(d)) v(P) W_o + b_o, prompts (P, C) shared by the batch or
    (B, P, C), one set per sample."""
    H, C = attn.num_heads, x.shape[-1]
    wq, wk, wv = attn.qkv.weight.split(C)
    bq, bk, bv = attn.qkv.bias.split(C)
    prompts = prompts if prompts.dim() == 3 else prompts.unsqueeze(0)
    q = heads(x @ wq.T + bq, H)
    k = heads(prompts @ wk.T + bk, H)
    v = heads(prompts @ wv.T + bv, H)
    a = (q @ k.transpose(-1, -2) / math.sqrt(C // H)).softmax(-1)
    return merge(a @ v) @ attn.proj.weight.T + attn.proj.bias


def block(blk, x, kv=None, ca=None, insert=None):
    """A pre-norm block; ``ca(x)`` joins at CVPT position ``insert``. Returns (x, attention)."""
    if insert == 1:
        x = x + ca(x)
    sa, a = attention(blk.attn, blk.norm1(x), kv)
    x = x + sa + (ca(x) if insert == 2 else 0)
    if insert == 3:
        x = x + ca(x)
    h = blk.norm2(x) + (ca(x) if insert == 4 else 0)
    x = x + blk.mlp(h)
    if insert == 5:
        x = x + ca(x)
    return x, a


def embed(vit, img):
    x = vit.patch_embed(img)
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x + vit.pos_embed


def full_sequence_forward(backbone, img):
    """PromptedViT's forward as it was before prompts became keys/values only: every
    method's prompt tokens join the sequence after the prefix and go through the whole block
    (queries, attention rows, output projection, MLP), their outputs replaced by the next
    block's prompts. It runs the backbone's own blocks and extension points in the same
    order, so it draws the same dropout and drop-path masks as the model."""
    from mmvpt.models.utils.attention import num_keys, self_attention
    x, grid = backbone.embed(img)
    method, vit = backbone.prompt, backbone.vit
    B, num_prefix = x.shape[0], vit.num_prefix_tokens
    ctx = method.start(B)
    P = 0
    for index, blk in enumerate(vit.blocks):
        before, after = (ctx.per_sample(kv) for kv in method.kv(ctx, index))
        tokens = method.tokens(ctx, index)
        if tokens is None:
            tokens = method.sequence_tokens(ctx, index)
        if tokens is not None:
            assert method.prompt_mask(ctx, index) is None  # one task: pruned tokens are removed
            tokens = ctx.per_sample(tokens).expand(B, -1, -1)
            x = torch.cat([x[:, :num_prefix], tokens, x[:, num_prefix + P:]], 1)
            P = tokens.shape[1]

        def term(where, h):
            term = method.residual_term(ctx, index, where, h, blk.attn)
            return 0 if term is None else term
        x = x + term('before_attn', x)
        sa, row = self_attention(blk.attn, blk.norm1(x), before, after, None,
                                 method.wants_cls_attention(index))
        x = x + blk.drop_path1(blk.ls1(sa)) + term('beside_attn', x)
        x = x + term('after_attn', x)
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x) + term('mlp_input', x))))
        x = x + term('after_mlp', x)
        if row is not None:
            image_start = num_prefix + P
            key_start = image_start + num_keys(before)
            x = method.after_block(ctx, index, x,
                                   row[:, key_start:key_start + x.shape[1] - image_start],
                                   image_start)
    x = vit.norm(x)
    return (x[:, 0], )


# -- reference forwards of a (tiny) PromptedViT, and the check against its forward -----------------
def finish(model, x):
    return model.vit.norm(x)[:, 0]


def assert_forward_equals(model, expected, images):
    with torch.no_grad():
        (out, ) = model(images)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def tokens_reference(model, images, prompts, kv=None, ar_prompts=None):
    """Prompt tokens after CLS: block i gets ``prompts(i)`` ((P, D), or (B, P, D) per sample),
    replacing the previous block's prompt outputs, or keeps them when it is None. ``kv(i)``:
    E²VPT key-value prompts; ``ar_prompts`` (L - 1, k, D): iVPT's attentive reinforcement."""
    B, L = images.shape[0], len(model.vit.blocks)
    x = embed(model.vit, images)
    num_prompts = 0
    for i, blk in enumerate(model.vit.blocks):
        p = prompts(i)
        if p is not None:
            x = torch.cat([x[:, :1], p.expand(B, -1, -1), x[:, 1 + num_prompts:]], 1)
            num_prompts = p.shape[-2]
        x, a = block(blk, x, kv=None if kv is None else kv(i))
        if ar_prompts is not None and i < L - 1:
            k = ar_prompts.shape[1]
            cls_to_image = a[:, :, 0, 1 + num_prompts:].mean(1)  # (B, image tokens)
            order = cls_to_image.argsort(dim=-1, descending=True)[:, :k]
            x = x.clone()
            for b in range(B):
                for j in range(k):
                    x[b, 1 + num_prompts + order[b, j]] += ar_prompts[i, j]
    return finish(model, x)


def cvpt_reference(model, images, prompts, insert=3, cross_attn=None):
    """CVPT: block i cross-attends to ``prompts(i)`` ((P, D) or (B, P, D)) at ``insert``,
    with ``cross_attn(i)``'s weights (default: the block's own attention)."""
    x = embed(model.vit, images)
    for i, blk in enumerate(model.vit.blocks):
        attn = blk.attn if cross_attn is None else cross_attn(i)
        x, _ = block(blk, x, ca=lambda h: cross_attention(attn, h, prompts(i)), insert=insert)
    return finish(model, x)

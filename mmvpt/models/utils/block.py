"""The pre-norm transformer block (ViT and Swin alike), with CVPT's cross-attention branch."""


def residual_block(x, attention, norm2, mlp, cross_attend=None, insert=None):
    """``x += attention(x); x += mlp(norm2(x))`` with a cross-attention term joining at
    CVPT's position ``insert`` (None: no branch):

    1. x += CA(x); x += SA(x); x += MLP(LN2 x)
    2. x += SA(x) + CA(x); x += MLP(LN2 x)
    3. x += SA(x); x += CA(x); x += MLP(LN2 x)
    4. x += SA(x); x += MLP(LN2 x + CA(x))
    5. x += SA(x); x += MLP(LN2 x); x += CA(x)

    ``attention`` is the whole branch (its own norm, drop-path, layer scale), as is ``mlp``
    after ``norm2``; the cross-attention branch gets neither norm nor drop-path.
    """
    if insert == 1:
        x = x + cross_attend(x)
    sa = attention(x)
    x = x + sa + cross_attend(x) if insert == 2 else x + sa
    if insert == 3:
        x = x + cross_attend(x)
    h = norm2(x)
    if insert == 4:
        h = h + cross_attend(x)
    x = x + mlp(h)
    if insert == 5:
        x = x + cross_attend(x)
    return x

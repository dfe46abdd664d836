"""With prompts off, PromptedViT's feature maps equal mmseg's VisionTransformer on the
same weights converted to mmseg names, at the training size and at another size."""
import pytest
import torch

from mmvpt.models import PromptedViT
from mmvpt.models.utils import openmmlab_vit_to_timm, timm_vit_to_mmseg

from tests.helpers.tiny_models import vit_spec


@pytest.fixture(scope='module')
def pair():
    from mmseg.models.backbones import VisionTransformer
    torch.manual_seed(0)
    ours = PromptedViT(**vit_spec(depth=4), out_type='featmap', out_indices=(0, 2, 3),
                       interpolate_mode='bicubic').eval()
    with torch.no_grad():
        for p in ours.vit.parameters():
            p.normal_(0, 0.05)
    theirs = VisionTransformer(img_size=32, patch_size=8, embed_dims=32, num_layers=4,
                               num_heads=4, out_indices=(0, 2, 3), final_norm=True,
                               patch_bias=True, norm_cfg=dict(type='LN', eps=1e-6),
                               interpolate_mode='bicubic')
    theirs.eval()  # mmseg's train() returns None
    missing, unexpected = theirs.load_state_dict(timm_vit_to_mmseg(ours.vit.state_dict()),
                                                 strict=False)
    assert not missing and not unexpected
    return ours, theirs


@pytest.mark.parametrize('size', [(32, 32), (48, 64), (37, 57)])  # 37 x 57: padded to the grid
def test_feature_maps_equal_mmseg(pair, size):
    ours, theirs = pair
    img = torch.randn(2, 3, *size)
    with torch.no_grad():
        a, b = ours(img), theirs(img)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert x.shape == y.shape == (2, 32, -(-size[0] // 8), -(-size[1] // 8))
        torch.testing.assert_close(x, y, rtol=0, atol=1e-5)


def test_mmseg_names_convert_back_to_timm(pair, tmp_path):
    ours, theirs = pair
    back = openmmlab_vit_to_timm(theirs.state_dict())
    expected = ours.vit.state_dict()
    assert back.keys() == expected.keys()
    for key in back:
        torch.testing.assert_close(back[key], expected[key], rtol=0, atol=0)
    # and an mmseg-format checkpoint loads through init_cfg
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in theirs.state_dict().items()}),
               tmp_path / 'mmseg_vit.pth')
    model = PromptedViT(**vit_spec(depth=4),
                        init_cfg=dict(type='Pretrained',
                                      checkpoint=str(tmp_path / 'mmseg_vit.pth')))
    model.init_weights()
    for key, value in model.vit.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)

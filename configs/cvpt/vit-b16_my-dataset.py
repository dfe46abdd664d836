# Bring your own dataset: a folder of images with list files data/my_dataset/{train,val,
# test}.txt ("relative/path label" per line); everything else is CVPT's VTAB-1k recipe.
# A copy kept outside the repository (README "Your own dataset") names its base by absolute
# path, '/path/to/mmvpt/configs/cvpt/vit-b16_vtab-cifar.py': a relative _base_ is taken from
# the config's own folder.
_base_ = ['./vit-b16_vtab-cifar.py']

classes = ['cat', 'dog', 'fox', 'owl', 'yak']  # names in predictions; label i is classes[i]
num_classes = len(classes)
my_data = dict(_delete_=True, type='mmvpt.ListFileDataset', data_root='data/my_dataset',
               num_classes=num_classes, classes=classes, pipeline={{_base_.train_pipeline}})
model = dict(head=dict(num_classes=num_classes))
data_preprocessor = dict(num_classes=num_classes)
train_dataloader = dict(dataset=dict(my_data, split='train'))
val_dataloader = dict(dataset=dict(my_data, split='val'))
test_dataloader = dict(dataset=dict(my_data, split='test'))

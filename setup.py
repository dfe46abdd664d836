import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_requirements(name):
    """Requirement lines of requirements/<name>.txt, comments dropped."""
    with open(osp.join(HERE, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line]


def read_version():
    scope = {}
    with open(osp.join(HERE, 'mmvpt', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='mmvpt',
    version=read_version(),
    description='Visual prompt tuning (VPT, E2VPT, CVPT, iVPT) for mmpretrain and mmsegmentation',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmvpt', 'mmvpt.*']),
    python_requires='>=3.9',
    # torch/torchvision and mmcv come from requirements/torch.txt and requirements/mmcv.txt,
    # installed first (mmcv's ops compile against the installed torch); see README.
    install_requires=read_requirements('runtime') + ['torch>=2.1', 'mmcv>=2.0.0rc4,<2.2.0'],
    extras_require={'tests': read_requirements('tests')},
    license='Apache-2.0',
    zip_safe=False,
)

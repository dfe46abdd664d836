"""The registered methods, found rather than listed: every module of ``mmvpt.models.prompts``
and ``mmvpt.models.adapters`` is imported, and every :class:`PromptMethod` subclass
registered in ``mmvpt.MODELS`` is a method. What the rest of the project needs of one (its
display name, config folder, benchmark rows, recipe, protocol, tiny test settings) is
declared on its class; lists of methods elsewhere are derived from :func:`method_classes`."""
import importlib
import inspect
import pkgutil

from mmvpt.registry import MODELS


def import_modules(package):
    """Imports every module of ``package``; returns {class name: class} of the registered
    methods defined there (what the package exports)."""
    from .prompts.base import PromptMethod
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f'{package.__name__}.{info.name}')
        for name, obj in vars(module).items():
            if (isinstance(obj, type) and issubclass(obj, PromptMethod)
                    and obj.__module__ == module.__name__ and MODELS.module_dict.get(name) is obj):
                found[name] = obj
    return found


def method_classes():
    """Every registered method class, in table order (``table_order``, then name)."""
    from . import adapters, prompts  # noqa: F401  imports every method module
    from .prompts.base import PromptMethod
    classes = {obj for obj in MODELS.module_dict.values()
               if isinstance(obj, type) and issubclass(obj, PromptMethod)}
    return sorted(classes, key=lambda cls: (cls.table_order, cls.__name__))


def registered_type(cls):
    """``cls``'s config type, e.g. ``'mmvpt.LoRA'``."""
    return f'mmvpt.{cls.__name__}'


def method_folders():
    """{config folder: (prompt type, frozen backbone)} of configs/, in table order: full
    fine-tuning and linear probing (no method), then each method with a ``config_folder``."""
    folders = dict(full=(None, False), linear=(None, True))
    for cls in method_classes():
        if cls.config_folder:
            folders[cls.config_folder] = (registered_type(cls), True)
    return folders


def tiny_settings():
    """{name: prompt config} of every method's tiny test settings, in table order."""
    return {name: dict(type=registered_type(cls), **options)
            for cls in method_classes() for name, options in cls.tiny_settings.items()}


def benchmark_rows():
    """{row name: (method class, what the row's label adds, options)}, in table order."""
    return {name: (cls, suffix, dict(options)) for cls in method_classes()
            for name, (suffix, options) in cls.benchmark_rows.items()}


def takes_prompt_count(cls):
    """Whether a method has a prompt count P (``num_tokens``): its rows are measured at each P."""
    return 'num_tokens' in inspect.signature(cls).parameters

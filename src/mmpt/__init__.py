"""mmpt: multimodal prompt tuning for vision-language models.

Public entry points::

    import mmpt
    vlm = mmpt.models.load("mmpt-tiny")            # offline default VLM
    handle = mmpt.methods.apply(vlm, PrefixConfig(length=16))
"""

from mmpt import methods, models

__all__ = ["methods", "models", "__version__"]
__version__ = "0.1.0"

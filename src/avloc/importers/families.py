"""The published checkpoint layouts avloc imports (facts read from each public repository).

=============== ============== ====================================================================
family          avloc method   published layout (keys after ``module.`` is stripped)
=============== ============== ====================================================================
``lvs``         ``lvs``        ``imgnet.*`` / ``audnet.*``: LVS's own ResNet-18 (``layer4`` stride 1
                               in both: 14x14 visual map at 224), audio stem ``audnet.conv1_a``;
                               no projections (c = 512). Under ``model_state_dict``.
``sslalign``    ``lvs``        the same network (SSL-Alignment's ``model_lvs.py`` evaluation path),
                               spectrogram ``noverlap`` 353, 3 s window.
``ezvsl``       ``ezvsl``      torchvision ResNet-18 ``imgnet.*`` (7x7) and ``audnet.*`` (1-channel
                               ``conv1``), ``img_proj`` (1x1 conv) and ``aud_proj`` (linear). Under ``model``.
``fnac``        ``fnac``       EZ-VSL's layout (FNAC changes the loss only).
``slavc``       ``slavc``      EZ-VSL's encoders with two heads each (``img_proj1/2``, ``aud_proj1/2``)
                               and momentum copies (``momentum_*``), all kept (the model trains on);
                               localises with the online weights (SLAVC ``test.py`` default,
                               ``use_mom_eval`` off).
``slavc-momentum`` ``slavc``   the same file and weights, localising with the momentum encoders
                               (``momentum_eval``, SLAVC ``--use_mom_eval``).
=============== ============== ====================================================================

Preprocessing (test-time settings of each repository):

* images: 224, ImageNet mean / std. LVS and SSL-Alignment: short side to 224 then a
  centre crop (``mode="crop"``); EZ-VSL, SLAVC, FNAC: squash to 224 x 224 (``"squash"``).
  The repos resize with PIL bicubic; avloc resizes bilinearly (antialiased), a
  documented difference of a few grey levels.
* audio: ``scipy.signal.spectrogram(nperseg=512, noverlap=274)`` (SSL-Alignment: 353),
  ``log(S + 1e-7)``, ``/ 12`` -- avloc's ``lvs`` front-end. Window: LVS ``test.py`` the
  first 10 s (tiled if shorter), EZ-VSL / FNAC 3 s and SLAVC 5 s around the middle,
  SSL-Alignment 3.5-6.5 s of a 10 s clip (3 s around the middle); avloc centres the
  window on the analysed frame. The repos compute the spectrogram at the file's own
  rate and their data are 16 kHz VGG-Sound / Flickr audio (SSL-Alignment hard-codes
  16000), hence ``sample_rate=16000`` (``--sample-rate`` to change it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avloc.frontends.audio import AudioFrontendConfig
from avloc.frontends.image import ImageConfig
from avloc.importers import ImportFamily, Rule, StateDict, register_family, width_of
from avloc.methods.base import MethodConfig
from avloc.methods.ezvsl import EZVSLConfig
from avloc.methods.fnac import FNACConfig
from avloc.methods.lvs import LVSConfig
from avloc.methods.slavc import SLAVCConfig

#: the ResNet-18 trunk's parameter prefixes, shared by torchvision and LVS's ``base_models``
_TRUNK = ("bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
#: image size of every family (ResNet-18 at 224, the papers' input)
IMAGE_SIZE = 224
#: the LVS spectrogram of the repos: nperseg 512, log eps 1e-7, std 12
NPERSEG, LVS_NOVERLAP, SSLALIGN_NOVERLAP = 512, 274, 353


def _trunk(src: str, dst: str, stem: str) -> tuple[Rule, ...]:
    """Rules mapping a published ResNet-18 under ``src`` (first conv ``stem``) onto avloc's trunk under ``dst``."""
    return ((f"{src}{stem}.", f"{dst}conv1."), *((f"{src}{p}", f"{dst}{p}") for p in _TRUNK))


def _audio(sample_rate: int, window: float, noverlap: int) -> AudioFrontendConfig:
    return AudioFrontendConfig(sample_rate=sample_rate, window_seconds=window, kind="lvs", nperseg=NPERSEG, noverlap=noverlap)


def _lvs_config(window: float, noverlap: int) -> Callable[[StateDict, int], MethodConfig]:
    def build(state: StateDict, sample_rate: int) -> MethodConfig:
        return LVSConfig(
            audio=_audio(sample_rate, window, noverlap),
            image=ImageConfig(size=IMAGE_SIZE, resize=IMAGE_SIZE, mode="crop"),
            visual_encoder="resnet18",
            visual_encoder_kwargs={"out_stride": 16},
            audio_encoder="resnet18_audio",
            audio_encoder_kwargs={"out_stride": 16},
            freeze_visual=False,
            embed_dim=width_of(state, "imgnet.layer4.1.bn2.weight"),
            visual_proj="none",
        )

    return build


def _ezvsl_config(window: float, heads: int, proj: str, cls: type[EZVSLConfig] = EZVSLConfig,
                  **extra: Any) -> Callable[[StateDict, int], MethodConfig]:
    """The config of an EZ-VSL-family checkpoint: ``cls`` (EZ-VSL's or a subclass) with ``extra`` settings."""

    def build(state: StateDict, sample_rate: int) -> MethodConfig:
        return cls(
            audio=_audio(sample_rate, window, LVS_NOVERLAP),
            image=ImageConfig(size=IMAGE_SIZE, resize=IMAGE_SIZE, mode="squash"),
            visual_encoder="resnet18",
            visual_encoder_kwargs={},
            audio_encoder="resnet18_audio",
            audio_encoder_kwargs={},
            freeze_visual=False,
            embed_dim=width_of(state, f"{proj}.weight"),
            temperature=0.03,
            ogl=False,
            heads=heads,
            **extra,
        )

    return build


_LVS_RULES = (*_trunk("imgnet.", "visual_encoder.trunk.", "conv1"), *_trunk("audnet.", "audio_encoder.trunk.", "conv1_a"))
#: LVS's ResNet class holds three stems and a classifier per modality; the forward pass uses one stem, no classifier
_LVS_IGNORED = ("imgnet.conv1_a.", "imgnet.conv1_flow.", "imgnet.fc.", "audnet.conv1.", "audnet.conv1_flow.", "audnet.fc.")
_LVS_SIGNATURE = ("imgnet.conv1.weight", "imgnet.conv1_a.weight", "audnet.conv1_a.weight")

_EZVSL_RULES = (
    *_trunk("imgnet.", "visual_encoder.trunk.", "conv1"),
    *_trunk("audnet.", "audio_path.encoder.trunk.", "conv1"),
    ("img_proj.", "visual_proj.proj."),
    ("aud_proj.", "audio_path.proj."),
)
_EZVSL_SIGNATURE = ("imgnet.conv1.weight", "audnet.conv1.weight", "img_proj.weight", "aud_proj.weight")


def _slavc_rules(prefix: str) -> tuple[Rule, ...]:
    return (
        *_trunk(f"{prefix}imgnet.", "visual_encoder.trunk.", "conv1"),
        *_trunk(f"{prefix}audnet.", "audio_path.encoder.trunk.", "conv1"),
        (f"{prefix}img_proj1.", "visual_proj.proj."),
        (f"{prefix}aud_proj1.", "audio_path.proj."),
        (f"{prefix}img_proj2.", "extra_visual_proj.0.proj."),
        (f"{prefix}aud_proj2.", "extra_audio_proj.0."),
    )


def _slavc_momentum_rules() -> tuple[Rule, ...]:
    """SLAVC's momentum copies onto :class:`avloc.methods.slavc.SLAVC`'s ``momentum`` modules."""
    return (
        *_trunk("momentum_imgnet.", "momentum.visual_encoder.trunk.", "conv1"),
        *_trunk("momentum_audnet.", "momentum.audio_encoder.trunk.", "conv1"),
        ("momentum_img_proj1.", "momentum.visual_proj.proj."),
        ("momentum_aud_proj1.", "momentum.audio_proj."),
        ("momentum_img_proj2.", "momentum.extra_visual_proj.0.proj."),
        ("momentum_aud_proj2.", "momentum.extra_audio_proj.0."),
    )


_SLAVC_RULES = (*_slavc_rules(""), *_slavc_momentum_rules())
_SLAVC_SIGNATURE = ("img_proj1.weight", "img_proj2.weight", "aud_proj1.weight", "aud_proj2.weight", "momentum_imgnet.conv1.weight")

LVS_PAPER = "Chen et al., Localizing Visual Sounds the Hard Way, CVPR 2021"
EZVSL_PAPER = "Mo & Morgado, Localizing Visual Sounds the Easy Way, ECCV 2022"
SLAVC_PAPER = "Mo & Morgado, A Closer Look at Weakly-Supervised Audio-Visual Source Localization, NeurIPS 2022"

register_family(ImportFamily(
    name="lvs", method="lvs", paper=LVS_PAPER, repo="hche11/Localizing-Visual-Sounds-the-Hard-Way",
    rules=_LVS_RULES, ignored=_LVS_IGNORED, signature=_LVS_SIGNATURE,
    build_config=_lvs_config(10.0, LVS_NOVERLAP),
    notes="test.py: first 10 s of the clip; avloc centres a 10 s window on the frame",
), __name__)
register_family(ImportFamily(
    name="sslalign", method="lvs",
    paper="Senocak et al., Sound Source Localization is All about Cross-Modal Alignment, ICCV 2023",
    repo="kaistmm/SSLalignment", rules=_LVS_RULES, ignored=_LVS_IGNORED, signature=_LVS_SIGNATURE,
    build_config=_lvs_config(3.0, SSLALIGN_NOVERLAP),
    notes="evaluated through the LVS network (model_lvs.py); spectrogram noverlap 353",
), __name__)
register_family(ImportFamily(
    name="ezvsl", method="ezvsl", paper=EZVSL_PAPER, repo="stoneMo/EZ-VSL",
    rules=_EZVSL_RULES, signature=_EZVSL_SIGNATURE,
    build_config=_ezvsl_config(3.0, 1, "img_proj"),
    notes="the AV map; EZ-VSL's OGL uses a separate ImageNet ResNet-18, not part of the checkpoint",
), __name__)
register_family(ImportFamily(
    name="fnac", method="fnac",
    paper="Sun et al., Learning Audio-Visual Source Localization via False Negative Aware Contrastive Learning, CVPR 2023",
    repo="OpenNLPLab/FNAC_AVL", rules=_EZVSL_RULES, signature=_EZVSL_SIGNATURE,
    build_config=_ezvsl_config(3.0, 1, "img_proj", FNACConfig),
), __name__)
register_family(ImportFamily(
    name="slavc", method="slavc", paper=SLAVC_PAPER, repo="stoneMo/SLAVC",
    rules=_SLAVC_RULES, signature=_SLAVC_SIGNATURE,
    build_config=_ezvsl_config(5.0, 2, "img_proj1", SLAVCConfig, momentum_eval=False),
    notes="online and momentum encoders; localises with the online ones (test.py default)",
), __name__)
register_family(ImportFamily(
    name="slavc-momentum", method="slavc", paper=SLAVC_PAPER, repo="stoneMo/SLAVC",
    rules=_SLAVC_RULES, signature=_SLAVC_SIGNATURE,
    build_config=_ezvsl_config(5.0, 2, "img_proj1", SLAVCConfig, momentum_eval=True),
    notes="online and momentum encoders; localises with the momentum ones (SLAVC test.py --use_mom_eval)",
), __name__)

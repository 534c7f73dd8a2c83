"""Registries: one per extension point (methods, encoders, datasets, protocols, checkpoint importers).

Each registry maps a name to a factory (a class or a function) and knows, from a
table written below, which module defines each name; the module is imported
the first time one of its names is asked for (after timm's ``models/_registry.py``,
which imports nothing of the model families). So ``names()`` / ``in`` cost
nothing, and ``get`` / ``create`` import only the plugin asked for: listing
the methods or scoring saved maps never loads torch.

Rules (each one a :class:`RegistryError` naming the valid names or the table):

* unknown names and duplicate registrations raise;
* an avloc module may register only the names the table gives it, and a module
  the table names must register every name listed for it (checked on import and
  by :meth:`Registry.check`);
* code outside the ``avloc`` package (a user's plugin, a test) may register
  further names; they are listed once their module has been imported.

A new method / encoder / dataset / protocol adds its module and names to the
table here and registers them with the registry's ``register`` decorator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from avloc.errors import AvlocError

T = TypeVar("T", bound=Callable[..., Any])

#: the package whose modules must be listed in a registry's table
PACKAGE = "avloc"


class RegistryError(AvlocError, KeyError):
    """Unknown or duplicate registry name, or a registration the table does not list."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry(Generic[T]):
    """A name -> factory mapping for one extension point, importing each module on first use.

    ``modules``: module path -> the names it registers (the table).
    """

    def __init__(self, kind: str, modules: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.kind = kind
        self.modules: dict[str, tuple[str, ...]] = dict(modules or {})
        self._where: dict[str, str] = {}
        for module, names in self.modules.items():
            for name in names:
                if name in self._where:
                    raise RegistryError(f"{kind} {name!r} is listed for {self._where[name]} and {module}")
                self._where[name] = module
        self._items: dict[str, T] = {}

    # ---- registration (called by the plugin modules)
    def register(self, name: str, *, module: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; ``module``: the registering module (``obj.__module__``)."""

        def deco(obj: T) -> T:
            where = module or getattr(obj, "__module__", "") or ""
            listed = self._where.get(name)
            if where.split(".")[0] == PACKAGE and listed != where:
                hint = f"the table lists it for {listed}" if listed else "the table does not list it"
                raise RegistryError(
                    f"{where} registers {self.kind} {name!r} but {hint}: edit the {self.kind} table in avloc.registry"
                )
            if name in self._items:
                raise RegistryError(f"duplicate {self.kind} name {name!r}; already registered: {self._items[name]!r}")
            self._items[name] = obj
            self._where.setdefault(name, where)
            return obj

        return deco

    # ---- look-up (imports the one module that defines ``name``)
    def get(self, name: str) -> T:
        """The factory registered as ``name``, importing its module if needed; unknown names list the valid ones."""
        if name not in self._items:
            module = self._where.get(name)
            if module is None:
                raise RegistryError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names()) or '(none)'}")
            importlib.import_module(module)
            if name not in self._items:
                raise RegistryError(f"the {self.kind} table lists {name!r} for {module}, which does not register it")
        return self._items[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """``get(name)(**kwargs)``."""
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        """Sorted names: the table's and those registered from outside avloc (nothing is imported)."""
        return sorted(self._where)

    def module_of(self, name: str) -> str:
        """The module that defines ``name`` (from the table, or the one that registered an outside plugin)."""
        if name in self._where:
            return self._where[name]
        raise RegistryError(f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names()) or '(none)'}")

    def check(self) -> None:
        """Import every module of the table and check that each registers exactly the names listed for it."""
        for module, names in self.modules.items():
            importlib.import_module(module)
            missing = [n for n in names if n not in self._items]
            if missing:
                raise RegistryError(f"the {self.kind} table lists {missing} for {module}, which does not register them")

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


# ----------------------------------------------------------------------------- the tables

METHODS: Registry[Any] = Registry("method", {
    "avloc.methods.lvs": ("lvs",),
    "avloc.methods.avsync_prior": ("avsync-objectness",),
    "avloc.methods.attention10k": ("attention10k",),
    "avloc.methods.avenet": ("ots",),
    "avloc.methods.ezvsl": ("ezvsl",),
    "avloc.methods.fnac": ("fnac",),
    "avloc.methods.slavc": ("slavc",),
    "avloc.methods.sslalign": ("sslalign",),
    "avloc.methods.priors": ("random", "centre", "objectness"),
    "avloc.methods.synchrony": ("synchrony",),
    "avloc.methods.proposal_mil": ("proposal",),
    "avloc.methods.twostage": ("twostage",),
    "avloc.methods.classif": ("classif",),
    "avloc.methods.dnm.method": ("dnm",),
    "avloc.methods.dnm_baselines": ("dnm-cam", "dnm-tian"),
    "avloc.methods.avsemantic.method": ("avsemantic",),
})

ENCODERS: Registry[Any] = Registry("encoder", {
    "avloc.encoders.efficientnet_lite": ("efficientnet_lite0",),
    "avloc.encoders.resnet": ("resnet18", "resnet18_audio"),
    "avloc.encoders.small_cnn": ("small_cnn", "small_cnn_audio"),
})

DATASETS: Registry[Any] = Registry("dataset", {
    "avloc.data.datasets": ("manifest",),
    "avloc.data.digitscenes.dataset": ("digitscenes",),
    "avloc.data.clips": ("digitscenes-clips",),
    "avloc.data.constructions": ("realclips-constructions",),
    "avloc.data.shards": ("shards",),
})

PROTOCOLS: Registry[Any] = Registry("protocol", {
    "avloc.metrics.protocols.ciou": (
        "lvs-vggss", "lvs-flickr", "ezvsl-vggss", "ezvsl-flickr",
        *(f"sslalign-{path}{bin_}{ds}{groups}" for path in ("", "lvs-") for bin_ in ("", "adaptive-")
          for ds in ("vggss", "flickr") for groups in ("", "-namegroups")),
        "sslalign", "sslalign-adaptive", "aclssl-sweep-vggss", "aclssl-sweep-flickr", "dsol-music",
    ),
    "avloc.metrics.protocols.extended": (
        "slavc-extended", "slavc-extended-allthr", "slavc-extended-flickr", "slavc-extended-flickr-allthr",
    ),
    "avloc.metrics.protocols.classaware": ("dsol-classaware", "dsol-duet", "qian-classaware"),
    "avloc.metrics.protocols.avsol": ("avsol",),
    "avloc.metrics.protocols.realworld": ("realclips",),
})

IMPORTERS: Registry[Any] = Registry("checkpoint family", {
    "avloc.importers.families": ("lvs", "sslalign", "ezvsl", "fnac", "slavc", "slavc-momentum"),
})

VISION: Registry[Any] = Registry("vision model", {
    "avloc.vision.nanodet": ("nanodet",),
    "avloc.vision.centernet": ("centernet",),
    "avloc.vision.movenet": ("movenet",),
    "avloc.vision.pose": ("blazepose",),
    "avloc.vision.segmentation": ("selfie-segmentation",),
})

#: every registry, by the name ``avloc info`` lists it under
REGISTRIES: dict[str, Registry[Any]] = {
    "methods": METHODS,
    "encoders": ENCODERS,
    "datasets": DATASETS,
    "protocols": PROTOCOLS,
    "checkpoint_families": IMPORTERS,
    "vision_models": VISION,
}

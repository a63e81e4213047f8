"""The variant registry: every adapter variant by name, with its example configurations. The model API (attach,
save / load), the demo, the tests and the benchmarks take their variants from here; a new variant is one entry
(docs/adding_a_variant.md)."""
import dataclasses

from ._base import SVDAdapter
from .ablate import AblateLinear
from .antipasto import AntiPaSTOLinear
from .corda import CorDALinear
from .dplr import DPLRLinear
from .rot import RotLinear


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # attach(model, name); the research code calls it antipasto_<name> (antipasto itself: antipasto)
    cls: type
    # example name -> kwargs: every option that changes the core, small enough for tests
    examples: dict
    # the kwargs of the demo and the benchmarks (rank-like options at their usual sizes)
    demo: dict
    # the core is the exact identity at init (coeff 1), not only at coeff 0
    identity_at_init: bool


VARIANTS = {v.name: v for v in [
    Variant("antipasto", AntiPaSTOLinear, {"antipasto": {}, "antipasto_suppress": {"suppress_only": True}}, {}, True),
    Variant("rot", RotLinear, {"rot_V": {"block_size": 4}, "rot_U": {"block_size": 2, "rotate_basis": "U"},
                               "rot_none": {"block_size": 4, "rotate_basis": "none"}}, {"block_size": 4}, False),
    Variant("ablate", AblateLinear, {"ablate": {"k": 1}, "ablate_k3": {"k": 3},
                                     "ablate_k3_cov": {"k": 3, "cov_orient": True}}, {"k": 2}, False),
    Variant("corda", CorDALinear, {"corda": {}}, {}, True),
    Variant("dplr", DPLRLinear, {"dplr": {"lora_rank": 3}}, {"lora_rank": 8}, True),
]}
# the research code's names
ALIASES = {f"antipasto_{name}": name for name in VARIANTS if name != "antipasto"}
# every example configuration: example name -> (variant name, kwargs)
EXAMPLES = {ex: (v.name, kw) for v in VARIANTS.values() for ex, kw in v.examples.items()}
_BY_CLASS = {v.cls: v for v in VARIANTS.values()}


def research_name(name: str) -> str:
    return name if name == "antipasto" else f"antipasto_{name}"


def variant(name: str) -> Variant:
    """The variant called ``name`` (or the research code's name for it)."""
    key = ALIASES.get(name, name) if isinstance(name, str) else None
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {sorted(VARIANTS) + sorted(ALIASES)}")
    return VARIANTS[key]


def variant_of(m: SVDAdapter) -> Variant:
    """The variant of the module ``m`` (its class or a subclass of it)."""
    for cls in type(m).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    raise ValueError(f"{type(m).__name__} is not one of the variants {sorted(VARIANTS)}")

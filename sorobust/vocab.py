"""The closed vocabularies of sorobust, each defined once (issue 12).

Every set of names the package, the command line, the workflow and the config schema share (datasets, training
methods, certifiers, targets, solvers, attacks, tables, figures) is a :class:`enum.StrEnum` here; everything else
derives from these: ``argparse`` choices (``sorobust.cli``), the Snakefile's ``wildcard_constraints`` and the
experiment plan (``sorobust.workflow``), the table captions (``sorobust.paper.tables``) and the list of tables CI
checks (``python -m sorobust.vocab tables figures``). The config schema (``workflow/schemas/*.yaml``) is static
YAML, read by Snakemake's validator; ``tests/test_vocab.py`` checks that its enums and every other consumer agree
with this module.

Values are coerced at the API edge with :func:`coerce`, which turns a wrong string into one line naming the
accepted values. Because each member *is* its string (``StrEnum``), paths, records and JSON keep the plain names.

A **certifier** of the path grammar (``certify/{model}/{certifier}-...``) is one entry of :data:`CERTIFIERS`: the
``sorobust certify`` options that select it, its label in tables and captions, whether it needs a smooth network,
and where its method comes from. A **training method** is one entry of :data:`TRAIN_METHODS`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import StrEnum

from .errors import SorobustError


class Dataset(StrEnum):
    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"


class Split(StrEnum):
    TEST = "test"
    TRAIN = "train"


class DType(StrEnum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


class Device(StrEnum):
    """A profile's device (the command line also takes ``cuda:N``)."""
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class Activation(StrEnum):
    SIGMOID = "sigmoid"
    TANH = "tanh"
    SOFTPLUS = "softplus"
    RELU = "relu"  # not twice differentiable: the baselines' nets only (CRC refuses it)


#: the activations CRC, the curvature bounds and the second-order attack accept
SMOOTH_ACTIVATIONS = (Activation.SIGMOID, Activation.TANH, Activation.SOFTPLUS)


class TrainMethod(StrEnum):
    STANDARD = "standard"
    GAMMA = "gamma"
    CRT = "crt"
    PGD = "pgd"
    TRADES = "trades"
    CROWN_IBP = "crown-ibp"
    COAP = "coap"


class Selection(StrEnum):
    LAST = "last"
    BEST_VAL = "best-val"
    BEST_TEST = "best-test"  # the reference code's choice, labelled wherever it is used


class CRTAttack(StrEnum):
    """The inner second-order attack of CRT training."""
    KKT = "kkt"
    MM = "mm"


class CertifyMethod(StrEnum):
    """``sorobust certify --method``."""
    CRC = "crc"
    CROWN = "crown"
    IBP = "ibp"
    CROWN_IBP = "crown-ibp"
    COAP = "coap"
    CNN_CERT = "cnn-cert"


class Curvature(StrEnum):
    GLOBAL = "global"
    LOCAL = "local"


class Targets(StrEnum):
    """Which wrong classes a certificate or an attack covers."""
    ALL = "all"              # every wrong class: the sound protocol, the default
    RUNNER_UP = "runner-up"  # the reference code's protocol (labelled)
    RANDOM = "random"        # CNN-Cert's protocol (baselines only, command line only)


#: the targets of the workflow's path grammar
WORKFLOW_TARGETS = (Targets.ALL, Targets.RUNNER_UP)


class Solver(StrEnum):
    """CRC's inner solver."""
    KKT = "kkt"
    NEWTON = "newton"
    MM = "mm"


class Attack(StrEnum):
    """``sorobust attack --method`` and the attack names of the path grammar."""
    SECOND_ORDER = "second-order"
    PGD = "pgd"
    AUTOATTACK = "autoattack"


class AAVersion(StrEnum):
    STANDARD = "standard"  # APGD-CE, APGD-T, FAB-T, Square: the published protocol
    APGD = "apgd"          # APGD-CE and APGD-T only (labelled)


class Table(StrEnum):
    TABLE1 = "table1"
    TABLE2 = "table2"
    TABLE3 = "table3"
    TABLE4 = "table4"
    TABLE5 = "table5"
    ICLR_TABLE3 = "iclr_table3"
    PROTOCOL = "protocol"
    HEADLINE = "headline"


class Figure(StrEnum):
    CURVATURE = "curvature"
    CERTIFIED_VS_RADIUS = "certified_vs_radius"


@dataclass(frozen=True)
class CertifierSpec:
    """A certifier of the path grammar: what selects it on the command line and how tables name it."""
    name: str
    method: CertifyMethod
    options: tuple[str, ...]
    label: str
    smooth_only: bool
    source: str


CERTIFIERS: dict[str, CertifierSpec] = {s.name: s for s in (
    CertifierSpec("crc-global", CertifyMethod.CRC, ("--curvature", "global"), "CRC-global", True,
                  "Singla & Feizi 2020, Theorem 3 with Theorem 4's global curvature bound"),
    CertifierSpec("crc-local", CertifyMethod.CRC, ("--curvature", "local"), "CRC-local", True,
                  "Theorem 3 with curvature bounds on the ball (interval arithmetic; sorobust.curvature)"),
    CertifierSpec("crown", CertifyMethod.CROWN, (), "CROWN", False, "Zhang et al. 2018 (CROWN), ℓ2"),
    CertifierSpec("ibp", CertifyMethod.IBP, (), "IBP", False, "Gowal et al. 2018 (interval bound propagation), ℓ2"),
    CertifierSpec("crown-ibp", CertifyMethod.CROWN_IBP, (), "CROWN-IBP", False, "Zhang et al. 2020 (CROWN-IBP)"),
    CertifierSpec("coap", CertifyMethod.COAP, (), "COAP-exact", False,
                  "Wong & Kolter 2018 / Wong et al. 2018 (convex_adversarial, exact ℓ2 dual bound)"),
    CertifierSpec("cnn-cert", CertifyMethod.CNN_CERT, (), "CNN-Cert (= CROWN on the conv net)", False,
                  "Boopathy et al. 2019 (CNN-Cert): CROWN on the unrolled convolution"),
)}


@dataclass(frozen=True)
class TrainMethodSpec:
    """A training method: its label and whether its models depend on a training radius ρ (else ρ = 0 in paths)."""
    method: TrainMethod
    label: str
    uses_radius: bool


TRAIN_METHODS: dict[str, TrainMethodSpec] = {s.method.value: s for s in (
    TrainMethodSpec(TrainMethod.STANDARD, "standard", False),
    TrainMethodSpec(TrainMethod.GAMMA, "γ-regularised", False),
    TrainMethodSpec(TrainMethod.CRT, "CRT", True),
    TrainMethodSpec(TrainMethod.PGD, "PGD", True),
    TrainMethodSpec(TrainMethod.TRADES, "TRADES", True),
    TrainMethodSpec(TrainMethod.CROWN_IBP, "CROWN-IBP", True),
    TrainMethodSpec(TrainMethod.COAP, "COAP", True),
)}


class VocabularyError(SorobustError, ValueError):
    """A name outside its vocabulary (a :class:`SorobustError` for the CLI, a ``ValueError`` for Python callers)."""


def values(enum) -> tuple[str, ...]:
    """The names of a vocabulary, in definition order (argparse choices, wildcard alternatives)."""
    return tuple(m.value for m in enum)


def coerce(enum, value, what: str | None = None):
    """``value`` as a member of ``enum``; a wrong value raises :class:`SorobustError` with one line naming the
    accepted ones."""
    try:
        return enum(value)
    except ValueError:
        what = what or enum.__name__.lower()
        raise VocabularyError(f"unknown {what} {value!r}; expected one of: {', '.join(values(enum))}") from None


def main(argv=None) -> int:
    """``python -m sorobust.vocab NAME ...``: print the names of the vocabularies asked for, one per line (CI's
    report check reads the tables and figures from here)."""
    names = {"tables": Table, "figures": Figure, "certifiers": CERTIFIERS, "methods": TrainMethod,
             "attacks": Attack, "datasets": Dataset}
    argv = sys.argv[1:] if argv is None else argv
    if not argv or any(a not in names for a in argv):
        print(f"usage: python -m sorobust.vocab {{{','.join(names)}}} ...", file=sys.stderr)
        return 2
    for a in argv:
        v = names[a]
        print("\n".join(v if isinstance(v, dict) else values(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

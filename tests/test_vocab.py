"""Every consumer of a closed vocabulary agrees with its one definition in ``sorobust.vocab`` (issue 12): the
command line's choices, the config schemas' enums and keys, the Snakefile's wildcard constraints, the workflow's
path grammar, the table captions, the renderers and CI's list of tables."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sorobust import cli, vocab, workflow
from sorobust.paper import figures as figures_mod
from sorobust.paper import tables as tables_mod

ROOT = Path(__file__).resolve().parents[1]


def _schema(name):
    return yaml.safe_load((ROOT / "workflow" / "schemas" / name).read_text())


def _choices(command: str) -> dict:
    """{option: choices} of a ``sorobust`` subcommand."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.option_strings[-1]: tuple(a.choices) for a in sub.choices[command]._actions if a.choices}


def test_command_line_choices_are_the_vocabularies():
    v = vocab.values
    assert _choices("train") == {"--method": v(vocab.TrainMethod), "--attack": v(vocab.CRTAttack),
                                 "--selection": v(vocab.Selection), "--dataset": v(vocab.Dataset)}
    common = {"--dataset": v(vocab.Dataset), "--split": v(vocab.Split), "--dtype": v(vocab.DType)}
    assert _choices("certify") == {**common, "--method": v(vocab.CertifyMethod), "--curvature": v(vocab.Curvature),
                                   "--targets": v(vocab.Targets), "--solver": v(vocab.Solver)}
    assert _choices("attack") == {**common, "--method": v(vocab.Attack), "--targets": v(vocab.WORKFLOW_TARGETS),
                                  "--aa-version": v(vocab.AAVersion)}
    assert _choices("data") == {"--dataset": v(vocab.Dataset)}


def test_config_schema_enums_and_keys_are_the_vocabularies():
    s = _schema("config.schema.yaml")
    p = s["properties"]
    assert tuple(p["dataset"]["enum"]) == vocab.values(vocab.Dataset)
    assert tuple(p["device"]["enum"]) == vocab.values(vocab.Device)
    assert tuple(p["training"]["required"]) == vocab.values(vocab.TrainMethod)
    assert tuple(p["training"]["properties"]) == vocab.values(vocab.TrainMethod)
    assert tuple(p["training"]["properties"]["crt"]["properties"]["attack"]["enum"]) == vocab.values(vocab.CRTAttack)
    assert tuple(s["$defs"]["common_training"]["selection"]["enum"]) == vocab.values(vocab.Selection)
    assert tuple(p["tables"]["properties"]) == vocab.values(vocab.Table)
    assert tuple(p["figures"]["properties"]) == vocab.values(vocab.Figure)
    assert tuple(p["tables"]["properties"]["headline"]["properties"]["aa_version"]["enum"]) == \
        vocab.values(vocab.AAVersion)
    acts = p["figures"]["properties"]["curvature"]["properties"]["activation"]["enum"]
    assert tuple(acts) == tuple(a.value for a in vocab.SMOOTH_ACTIVATIONS)  # the curvature figure needs a Hessian
    d = _schema("derived.schema.yaml")["properties"]["restrict"]["properties"]
    assert tuple(d["tables"]["items"]["enum"]) == vocab.values(vocab.Table)
    assert tuple(d["figures"]["items"]["enum"]) == vocab.values(vocab.Figure)


def test_path_grammar_and_wildcards_are_the_vocabularies():
    assert workflow.CERTIFIERS == tuple(vocab.CERTIFIERS)
    assert workflow.TRAIN_METHODS == vocab.values(vocab.TrainMethod)
    assert workflow.ATTACKS == vocab.values(vocab.Attack)
    assert workflow.TABLES == vocab.values(vocab.Table)
    assert workflow.FIGURES == vocab.values(vocab.Figure)
    snakefile = (ROOT / "Snakefile").read_text()
    block = snakefile[snakefile.index("wildcard_constraints:"):snakefile.index("include: \"workflow/rules/data.smk\"")]
    for wc, name in (("method", "TRAIN_METHODS"), ("certifier", "CERTIFIERS"), ("attack", "ATTACKS"),
                     ("targets", "TARGETS"), ("table", "TABLES"), ("figure", "FIGURES")):
        assert re.search(rf"^\s+{wc}=\"\|\"\.join\({name}\),$", block, re.M), wc  # derived, not spelled out
    assert "values(Activation)" in block
    # every certifier's command line selects a method the command line accepts, with options it knows
    certify = _choices("certify")
    for name, spec in vocab.CERTIFIERS.items():
        args = workflow.certify_args(name)
        assert args[1] in certify["--method"]
        for opt, val in zip(args[::2], args[1::2]):
            assert val in certify[opt], (name, opt, val)


def test_every_table_and_figure_has_a_renderer_and_a_caption_name():
    assert set(tables_mod.TABLES) == set(vocab.values(vocab.Table))
    assert set(figures_mod.FIGURES) == set(vocab.values(vocab.Figure))
    assert set(tables_mod._CERTIFIER_NAMES) == set(vocab.CERTIFIERS)
    assert set(tables_mod._METHOD_NAMES) == set(vocab.values(vocab.TrainMethod))


def test_ci_checks_every_table_and_figure_from_the_vocabulary():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "$(python -m sorobust.vocab tables figures)" in ci
    out = subprocess.run([sys.executable, "-m", "sorobust.vocab", "tables", "figures"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [*vocab.values(vocab.Table), *vocab.values(vocab.Figure)]
    assert subprocess.run([sys.executable, "-m", "sorobust.vocab", "nonsense"], capture_output=True).returncode == 2


def test_coerce_names_the_accepted_values_in_one_line():
    assert vocab.coerce(vocab.Targets, "runner-up") is vocab.Targets.RUNNER_UP
    assert vocab.coerce(vocab.Targets, "runner-up") == "runner-up"  # a member is its string
    with pytest.raises(vocab.VocabularyError, match=r"^unknown targets 'second'; expected one of: all, runner-up, "
                                                    r"random$"):
        vocab.coerce(vocab.Targets, "second")
    with pytest.raises(ValueError):  # Python callers can catch it as a ValueError
        vocab.coerce(vocab.Solver, "lbfgs")


def test_published_numbers_are_keyed_by_dataset(tmp_path):
    """A Fashion-MNIST run gets none of the paper's MNIST numbers; a published file with a dataset column gives
    each dataset its own."""
    from sorobust.paper import figures, tables

    pub = ROOT / "config" / "published.tsv"
    mnist = tables.load_published(pub, "mnist")
    assert mnist[("table1", "2", "softplus", "CRT, 0.01", "certified_acc")] == 69.79
    assert tables.load_published(pub, "fashion-mnist") == {}
    assert figures.load_paper_points(pub, "mnist")[(2, "softplus", "CRT, 0.01")] == 69.79
    assert figures.load_paper_points(pub, "fashion-mnist") == {}
    two = tmp_path / "published.tsv"
    two.write_text("table\tdepth\tactivation\ttraining\tcolumn\tvalue\tsource\tdataset\n"
                   "table1\t2\tsoftplus\tCRT, 0.01\tcertified_acc\t69.79\tICML\tmnist\n"
                   "table1\t2\tsoftplus\tCRT, 0.01\tcertified_acc\t41.5\tsomeone\tfashion-mnist\n")
    key = ("table1", "2", "softplus", "CRT, 0.01", "certified_acc")
    assert tables.load_published(two, "mnist") == {key: 69.79}
    assert tables.load_published(two, "fashion-mnist") == {key: 41.5}
    with pytest.raises(vocab.VocabularyError, match="unknown dataset 'cifar10'"):
        tables.load_published(two, "cifar10")


def test_every_training_method_has_one_loss():
    from sorobust import train

    assert set(train.LOSSES).isdisjoint(train.WHOLE_LOSSES)
    assert set(train.LOSSES) | set(train.WHOLE_LOSSES) == set(vocab.values(vocab.TrainMethod))
    assert train.METHODS == vocab.values(vocab.TrainMethod)


def test_every_baseline_certifier_has_a_radius_function():
    from sorobust.certify import radius_function

    for name, spec in vocab.CERTIFIERS.items():
        if spec.method != vocab.CertifyMethod.CRC:
            assert callable(radius_function(spec.method)), name
    with pytest.raises(vocab.VocabularyError, match="unknown certification method 'lp'"):
        radius_function("lp")


def test_one_certified_at_rho_rule():
    import torch

    from sorobust.summaries import certified_at

    assert certified_at(True, 0.6, True, 0.5) and certified_at(True, 0.6, None, 0.5)
    assert not certified_at(True, 0.5, True, 0.5)  # strictly above ρ
    assert not certified_at(False, 9.0, True, 0.5) and not certified_at(True, 9.0, False, 0.5)
    got = certified_at(torch.tensor([True, True, False, True]), torch.tensor([0.7, 0.2, 0.9, 0.8]),
                       torch.tensor([True, True, True, False]), 0.5)
    assert got.tolist() == [True, False, False, False]


def test_autoattack_versions_are_the_vocabulary():
    from sorobust import attacks

    assert tuple(attacks.AUTOATTACK_VERSIONS) == vocab.values(vocab.AAVersion)
    assert attacks.AUTOATTACK_VERSIONS["apgd"] == ["apgd-ce", "apgd-t"]

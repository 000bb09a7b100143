# Helpers shared by all rules. Config validation, the experiment plan, input functions.
import json
import sys
from pathlib import Path

from snakemake.utils import validate

from sorobust.audit import records_of
from sorobust.resources import GPU_RULES, cpu_guard, load_calibration, request
from sorobust.vocab import Activation, values

from sorobust.workflow import (
    ATTACKS,
    CERTIFIERS,
    FIGURES,
    STAGE_MODULES,
    STAGE_VERSIONS,
    TABLES,
    TARGETS,
    TRAIN_METHODS,
    attack_args,
    build_plan,
    certify_args,
    code_hash,
    derive_config,
    is_derived,
    load_yaml,
)


# Snakemake reads the config files (the profile's `configfile:` or --configfile) with a YAML loader that keeps the
# last of two equal keys silently; each is read again with sorobust's loader, which refuses a duplicate key.
for _configfile in workflow.configfiles:
    try:
        load_yaml(Path(_configfile).read_text(), str(_configfile))
    except ValueError as _e:
        sys.exit(f"error: {_e}")


# A derived profile (config/paper_cpu.yaml) restricts a base config: validated as such, then resolved from the
# base file, so every budget is the base's. Either way the resolved config is validated before anything runs.
if is_derived(config):
    validate(config, schema="../schemas/derived.schema.yaml")
    _resolved = derive_config(config, workflow.basedir)
    config.clear()
    config.update(_resolved)
validate(config, schema="../schemas/config.schema.yaml")

PLAN = build_plan(config)
PROFILE = PLAN.profile
RESULTS = f"results/{PROFILE}"
CONFIG_JSON = json.dumps(config, sort_keys=True)


# per-stage rerun triggers, in the params of every step: numerics versions for the compute stages (train, certify,
# attack), a hash of the rendering modules for tables and figures (sorobust.workflow.code_hash)
CODE = {stage: code_hash(stage) for stage in (*STAGE_VERSIONS, *STAGE_MODULES)}


# GPU jobs claim the `gpu` resource (profiles/ say how many GPUs there are); CPU profiles claim none, so their
# jobs run side by side on the cores
GPU = 0 if config.get("device") == "cpu" else 1


# What every job asks a scheduler for (issue 13): memory and run time from sorobust.resources, which scales the
# benchmark records of the quick profile (fitted into workflow/resources.json: `python -m sorobust.resources
# calibrate`) to the job's budget (epochs, training images, test points, width and depth) with a safety factor of
# 2, and doubles them on each retry; CPUs are the job's threads, GPUs one per compute job on a GPU profile (the
# SLURM executor turns `gpu` into --gpus). The one source of every rule's `resources:`.
RESOURCES = load_calibration(Path(workflow.basedir) / "workflow" / "resources.json")


def job_resources(rule):
    """The `resources:` of a rule's jobs (sorobust.resources.request; README "SLURM")."""

    def ask(wildcards, attempt, what):
        return request(RESOURCES, rule, wildcards, config, gpu=gpu, attempt=attempt)[what]

    on_gpu = rule in GPU_RULES
    gpu = GPU if on_gpu else 0
    res = {
        "mem_mb": lambda wildcards, attempt: ask(wildcards, attempt, "mem_mb"),
        "runtime": lambda wildcards, attempt: ask(wildcards, attempt, "runtime"),
        "cpus_per_task": lambda wildcards, threads: threads,
    }
    if on_gpu:
        res["gpu"] = gpu
    return res


def data_flags():
    return f"--data-dir {config['data_dir']}" if config.get("data_dir") else ""


def device_flag():
    return f"--device {config.get('device', 'auto')}"


def train_flags(wildcards):
    """`sorobust train` options of a model beyond those in its path (from the profile's training section)."""
    model = (f"{wildcards.arch}/{wildcards.method}-g{wildcards.gamma}-r{wildcards.rho}-e{wildcards.epochs}"
             f"-n{wildcards.ntrain}-s{wildcards.seed}")
    return " ".join(PLAN.train_args(model))


def certifier_flags(wildcards):
    return " ".join(certify_args(wildcards.certifier))


def limit_flag(wildcards):
    return "" if wildcards.ntest == "all" else f"--limit {wildcards.ntest}"


# the attacks of the generic attack rule; AutoAttack has its own rule (attack.smk)
GRADIENT_ATTACKS = "|".join(a for a in ATTACKS if a != "autoattack")


def published_sound_of_table(wildcards):
    """The published sound results a table shows beside its rows (the headline's), else nothing."""
    path = PLAN.tables[wildcards.table].get("published_sound")
    return [path] if path else []


def records_of_table(wildcards):
    return [f"{RESULTS}/{p}" for p in records_of(PLAN.tables[wildcards.table])]


def records_of_figure(wildcards):
    return [f"{RESULTS}/{p}" for p in records_of(PLAN.figures[wildcards.figure])]


def all_artifacts(wildcards):
    tables = expand(f"{RESULTS}/tables/{{table}}.csv", table=sorted(PLAN.tables))
    figures = expand(f"{RESULTS}/figures/{{figure}}.png", figure=sorted(PLAN.figures))
    models = [f"{RESULTS}/models/{m}/model.pt" for m in sorted(PLAN.models)]
    return tables + figures + models + [f"{RESULTS}/data.json"]


# A profile meant for a GPU (the paper profile, device: auto) about to run its jobs on a machine without one says
# what it costs and how to choose a CPU profile, and stops, instead of silently starting days of training
# (sorobust.resources.cpu_guard; SOROBUST_ALLOW_CPU=1 goes ahead). Dry runs and the SLURM executor are not asked.
onstart:
    if workflow.local_exec:
        _why = cpu_guard(config, RESOURCES)
        if _why:
            raise SystemExit(f"error: {_why}")


# When the run has finished: Table 1 beside the paper's numbers, and where the tables, figures and report are
# (sorobust.paper.tables.finished_message).
onsuccess:
    from sorobust.paper.tables import finished_message

    _args = "".join(f"--configfile {f} " for f in workflow.overwrite_configfiles) + f"--config name={PROFILE} "
    print(finished_message(RESULTS, _args))

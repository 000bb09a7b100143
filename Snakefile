# sorobust: every table and figure of Singla & Feizi (ICML 2020) as versioned, auditable artifacts.
#
#   snakemake --profile profiles/default                           # paper profile (config/config.yaml), GPU box
#   snakemake --profile profiles/default --configfile config/quick.yaml   # CPU reproduction (< 3 h on 2 cores)
#   snakemake --profile profiles/default --configfile config/smoke.yaml   # CI smoke run (minutes)
#
# Path grammar (all under results/{profile}/; the full grammar is in sorobust/workflow.py and README):
#   models/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}/model.pt        train
#   certify/{model}/{certifier}-{targets}-r{rho}-n{ntest}.tsv                            certify
#   attack/{model}/{attack}-{targets}-r{rho}-n{ntest}.tsv                                attack
#   curvature/{model}/K-n{ntest}.tsv                                                     curvature
#   tables/{table}.{csv,md,tex,meta.json}  figures/{figure}.{png,pdf,meta.json}  MANIFEST.tsv
#   logs/{rule}/...log  benchmarks/{rule}/...tsv
# with {model} = {arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}.

from snakemake.utils import min_version

min_version("9.0")


# The experiment config comes from the profile (profiles/default: config/config.yaml) or --configfile, which
# replaces it (no key-by-key merging of two profiles); it is validated in common.smk before anything runs.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# wildcards are fenced with the vocabularies of the path grammar (sorobust.vocab, through sorobust.workflow)
wildcard_constraints:
    profile=PROFILE,
    arch=r"(mlp-[0-9]+x[0-9]+|cnn-[0-9]+c[0-9]+k[0-9]+s)-(" + "|".join(values(Activation)) + ")",
    method="|".join(TRAIN_METHODS),
    gamma=r"[0-9.e-]+",
    rho=r"[0-9.e-]+",
    epochs=r"[0-9]+",
    ntrain=r"[0-9]+|all",
    ntest=r"[0-9]+|all",
    seed=r"[0-9]+",
    model=r"[^/]+/[^/]+",
    certifier="|".join(CERTIFIERS),
    attack="|".join(ATTACKS),
    targets="|".join(TARGETS),
    table="|".join(TABLES),
    figure="|".join(FIGURES),


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/certify.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


# ---------------------------------------------------------------------------------------------- targets
# every table, figure and the manifest of the profile
rule all:
    input:
        manifest=expand("results/{profile}/MANIFEST.tsv", profile=PROFILE),
    default_target: True

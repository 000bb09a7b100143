# ----------------------------------------------------------------------------------------------------- data
# The dataset (downloaded through torchvision where the internet exists, else read from data_dir), with the
# checksums every training job depends on; and the resolved plan every table and figure is rendered from.


rule data:
    output:
        json="results/{profile}/data.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/data/data.log",
    benchmark:
        "results/{profile}/benchmarks/data/data.tsv"
    params:
        dataset=config["dataset"],
        data=data_flags(),
    resources:
        **job_resources("data"),
    message:
        "checking the {params.dataset} data"
    shell:
        "sorobust data --dataset {params.dataset} {params.data} --out {output.json} > {log} 2>&1"


rule plan:
    output:
        json="results/{profile}/plan.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/plan/plan.log",
    benchmark:
        "results/{profile}/benchmarks/plan/plan.tsv"
    params:
        config=CONFIG_JSON,
        code=CODE["render"],
    resources:
        **job_resources("plan"),
    message:
        "resolving the experiment plan of profile {wildcards.profile}"
    shell:
        "sorobust plan --config-json '{params.config}' --out {output.json} > {log} 2>&1"

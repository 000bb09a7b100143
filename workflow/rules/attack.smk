# --------------------------------------------------------------------------------------------------- attack
# Per-point attacks of one model: the second-order attack (Definition 2; Table 3) or l2 PGD (ICLR Table 3); and
# AutoAttack-l2, all classes, the empirical upper bound of the headline table (its own rule: its version is a
# per-profile hyper-parameter, tables.headline.aa_version, recorded in plan.json and in every record).


rule attack:
    wildcard_constraints:
        attack=GRADIENT_ATTACKS,
    input:
        model="results/{profile}/models/{model}/model.pt",
    output:
        records="results/{profile}/attack/{model}/{attack}-{targets}-r{rho}-n{ntest}.tsv",
        summary="results/{profile}/attack/{model}/{attack}-{targets}-r{rho}-n{ntest}.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/attack/{model}/{attack}-{targets}-r{rho}-n{ntest}.log",
    benchmark:
        "results/{profile}/benchmarks/attack/{model}/{attack}-{targets}-r{rho}-n{ntest}.tsv"
    params:
        limit=limit_flag,
        data=data_flags(),
        device=device_flag(),
        batch=config["test"].get("batch_size", 100),
        code=CODE["attack"],
    threads: 1
    resources:
        **job_resources("attack"),
    message:
        "attacking {wildcards.model} with {wildcards.attack} at rho {wildcards.rho}"
    shell:
        "sorobust attack --checkpoint {input.model} --method {wildcards.attack} --targets {wildcards.targets}"
        " --rho {wildcards.rho} {params.limit} --batch-size {params.batch} --dtype float64 {params.data}"
        " {params.device} --threads {threads} --no-progress --out {output.records} > {log} 2>&1"


rule autoattack:
    wildcard_constraints:
        targets="all",
    input:
        model="results/{profile}/models/{model}/model.pt",
    output:
        records="results/{profile}/attack/{model}/autoattack-{targets}-r{rho}-n{ntest}.tsv",
        summary="results/{profile}/attack/{model}/autoattack-{targets}-r{rho}-n{ntest}.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/attack/{model}/autoattack-{targets}-r{rho}-n{ntest}.log",
    benchmark:
        "results/{profile}/benchmarks/attack/{model}/autoattack-{targets}-r{rho}-n{ntest}.tsv"
    params:
        method=" ".join(attack_args("autoattack", config)),
        limit=limit_flag,
        data=data_flags(),
        device=device_flag(),
        batch=config["test"].get("batch_size", 100),
        code=CODE["attack"],
    threads: 1
    resources:
        **job_resources("autoattack"),
    message:
        "attacking {wildcards.model} with AutoAttack-l2 at rho {wildcards.rho}"
    shell:
        "sorobust attack --checkpoint {input.model} {params.method} --targets {wildcards.targets}"
        " --rho {wildcards.rho} {params.limit} --batch-size {params.batch} --dtype float64 {params.data}"
        " {params.device} --threads {threads} --no-progress --out {output.records} > {log} 2>&1"

# -------------------------------------------------------------------------------------------------- certify
# Per-point certificates of one model: CRC (global or local curvature) or a baseline (CROWN, IBP, CROWN-IBP,
# COAP, CNN-Cert), all classes (sound) or the runner-up class (the reference protocol). Float64 throughout. A record
# holds each point's certificate, valid for every radius: the tables apply their ρ (no ρ in the path).


rule certify:
    input:
        model="results/{profile}/models/{model}/model.pt",
    output:
        records="results/{profile}/certify/{model}/{certifier}-{targets}-n{ntest}.tsv",
        summary="results/{profile}/certify/{model}/{certifier}-{targets}-n{ntest}.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/certify/{model}/{certifier}-{targets}-n{ntest}.log",
    benchmark:
        "results/{profile}/benchmarks/certify/{model}/{certifier}-{targets}-n{ntest}.tsv"
    params:
        method=certifier_flags,
        limit=limit_flag,
        data=data_flags(),
        device=device_flag(),
        batch=config["test"].get("batch_size", 100),
        code=CODE["certify"],
    threads: 1
    resources:
        **job_resources("certify"),
    message:
        "certifying {wildcards.model} with {wildcards.certifier} ({wildcards.targets})"
    shell:
        "sorobust certify --checkpoint {input.model} {params.method} --targets {wildcards.targets}"
        " {params.limit} --batch-size {params.batch} --dtype float64 {params.data}"
        " {params.device} --threads {threads} --no-progress --out {output.records} > {log} 2>&1"


rule curvature:
    input:
        model="results/{profile}/models/{model}/model.pt",
    output:
        records="results/{profile}/curvature/{model}/K-n{ntest}.tsv",
        summary="results/{profile}/curvature/{model}/K-n{ntest}.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/curvature/{model}/K-n{ntest}.log",
    benchmark:
        "results/{profile}/benchmarks/curvature/{model}/K-n{ntest}.tsv"
    params:
        limit=limit_flag,
        data=data_flags(),
        device=device_flag(),
        code=CODE["certify"],
    threads: 1
    resources:
        **job_resources("curvature"),
    message:
        "curvature bounds of {wildcards.model}"
    shell:
        "sorobust curvature --checkpoint {input.model} {params.limit} --batch-size 10 --dtype float64"
        " {params.data} {params.device} --threads {threads} --no-progress --out {output.records} > {log} 2>&1"

# ---------------------------------------------------------------------------------------------------- train
# One checkpoint per model variant, shared by every table that needs it. Progress is checkpointed to
# model.pt.partial after every epoch, so an interrupted run resumes; model.pt appears only when complete.


rule train:
    input:
        data="results/{profile}/data.json",
    output:
        model="results/{profile}/models/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}/model.pt",
        summary="results/{profile}/models/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}/model.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/train/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}.log",
    benchmark:
        "results/{profile}/benchmarks/train/{arch}/{method}-g{gamma}-r{rho}-e{epochs}-n{ntrain}-s{seed}.tsv"
    params:
        extra=train_flags,
        data=data_flags(),
        device=device_flag(),
        code=CODE["train"],
    threads: 2  # scaled down to --cores by a local run; a cluster executor has no core count to read
    resources:
        **job_resources("train"),
    message:
        "training {wildcards.arch} with {wildcards.method} (gamma {wildcards.gamma}, rho {wildcards.rho})"
    shell:
        "sorobust train --arch {wildcards.arch} --method {wildcards.method} --gamma {wildcards.gamma}"
        " --rho {wildcards.rho} --epochs {wildcards.epochs} --seed {wildcards.seed} {params.extra} {params.data}"
        " {params.device} --threads {threads} --no-progress --out {output.model} > {log} 2>&1"

# -------------------------------------------------------------------------------------------------- figures
# Each figure from its per-point records, as PNG and PDF with a versioned provenance sidecar.


rule figure:
    input:
        plan="results/{profile}/plan.json",
        records=records_of_figure,
    output:
        png=report("results/{profile}/figures/{figure}.png", caption="../report/figure.rst", category="Figures"),
        pdf="results/{profile}/figures/{figure}.pdf",
        meta="results/{profile}/figures/{figure}.meta.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/figure/{figure}.log",
    benchmark:
        "results/{profile}/benchmarks/figure/{figure}.tsv"
    params:
        results=RESULTS,
        code=CODE["render"],
    resources:
        **job_resources("figure"),
    message:
        "drawing {wildcards.figure}"
    shell:
        "sorobust figure {wildcards.figure} --plan {input.plan} --results {params.results} > {log} 2>&1"

# --------------------------------------------------------------------------------------------------- tables
# Each paper table from its per-point records, beside the published numbers (config/published.tsv; the headline
# also beside the published sound results, config/published_sound.tsv), as CSV, Markdown and LaTeX with a caption
# derived from the plan (budget, protocol) and a versioned provenance sidecar; then the manifest of the whole
# results folder.


rule table:
    input:
        plan="results/{profile}/plan.json",
        published="config/published.tsv",
        published_sound=published_sound_of_table,
        records=records_of_table,
    output:
        csv=report("results/{profile}/tables/{table}.csv", caption="../report/table.rst", category="Tables"),
        md="results/{profile}/tables/{table}.md",
        tex="results/{profile}/tables/{table}.tex",
        meta="results/{profile}/tables/{table}.meta.json",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/table/{table}.log",
    benchmark:
        "results/{profile}/benchmarks/table/{table}.tsv"
    params:
        results=RESULTS,
        code=CODE["render"],
    resources:
        **job_resources("table"),
    message:
        "rendering {wildcards.table}"
    shell:
        "sorobust table {wildcards.table} --plan {input.plan} --results {params.results}"
        " --published {input.published} > {log} 2>&1"


rule manifest:
    input:
        artifacts=all_artifacts,
    output:
        manifest="results/{profile}/MANIFEST.tsv",
    conda:
        "../envs/sorobust.yaml"
    log:
        "results/{profile}/logs/manifest/manifest.log",
    benchmark:
        "results/{profile}/benchmarks/manifest/manifest.tsv"
    params:
        results=RESULTS,
        code=CODE["render"],
    resources:
        **job_resources("manifest"),
    message:
        "writing the manifest of {params.results}"
    shell:
        "sorobust manifest {params.results} > {log} 2>&1"

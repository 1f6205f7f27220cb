"""Server-side analyses of a federated job, run in the training queue (ALGORITHMS.md §5, §7).

    context.py    what a committed job's record holds: config, test data, model, per-round uploads
    influence.py  Fed-Influence after every committed round (idempotent, in order, within a budget),
                  the declared backdoor test's attack success rate, and automatic exclusion
    exclusion.py  the automatic-exclusion rule (a pure function of the influence ranking)
    replay.py     the exact leave-one-out replay of the recorded job (ground truth for the estimate)
    loo.py        on-demand AnalysisRun rows: size limits, progress, Pearson/Spearman against the estimate
    charts.py     Plotly figures: influence heatmap and bars, attack success, exclusion markers
    snapshot.py   the dashboard's "influence" section

Uses `training.fl` (Django-free) for the maths; only this package touches rows and job files.
"""

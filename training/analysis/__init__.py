"""Server-side analyses of a federated job, run in the training queue (ALGORITHMS.md §5, §7), and the
reports the dashboard draws. Above the engine, below the web: they read the job record and files, never
the pages.

    context.py       what a committed job's record holds: config, test data, model, per-round uploads
    influence.py     Fed-Influence after every committed round (idempotent, in order, within a budget),
                     the declared backdoor test's attack success rate, and automatic exclusion
    exclusion.py     the automatic-exclusion rule (a pure function of the influence ranking)
    replay.py        the exact leave-one-out replay of the recorded job (ground truth for the estimate)
    loo.py           on-demand AnalysisRun rows: size limits, progress, Pearson/Spearman against the estimate
    availability.py  who was available, picked and reported per round; participation and availability bias
    submodel.py      bytes per phone and round against the full model, the privacy preset's ε
    hooks.py         the round_committed receiver that queues the influence analysis
    tasks.py         their Celery tasks (names `training.tasks.*`, sent through training/jobs/dispatch.py)

Uses `training.fl` (Django-free) for the maths; figures are built in training/web/charts/.
"""

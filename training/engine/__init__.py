"""The round engine (after Bonawitz et al., "Towards Federated Learning at Scale", SysML 2019).

Every function takes ids, re-reads the rows, and is idempotent: a Celery task that runs twice (a worker
killed after doing the work but before acking it) finds the work done and returns. Transitions are
conditional UPDATEs on `Round.status` / `Job.status`, so concurrent callers cannot both win.

    prepare.py      prepare_job: data set -> shards -> Participant rows, round-0 checkpoint   [training]
    selection.py    who is eligible now, and whom the strategy picks
    rounds.py       start_round: select, lease, configure, fan out run_client; re-drive       [training]
    configure.py    what one phone receives in a round (model or submodel, config.json)
    client.py       run_client: one phone's round through its runtime, its upload checked     [devices]
    runtimes/       the client-runtime seam: how a client's round runs (exec: ADB shell per round)
    uploads.py      what a phone may upload; submodel jobs' download after the index request
    submodel_rounds.py, scaffold_notes.py   per-algorithm glue (FedSubAvg's request step, SCAFFOLD's notes)
    closing.py      close_round: aggregate, evaluate, checkpoint, commit or abandon            [training]
    watchdog.py     beat: re-drives rounds whose tasks were lost                               [training]
    jobdata.py      per-process caches of what a prepared job never changes (data, spec, strategy)
    tasks.py        the Celery tasks, thin wrappers over the above

A round's data flow through the rooms:

    web (views/api) --services.create_job--> jobs --dispatch: start_job--> engine.prepare
      engine.rounds.start_round --selection--> leases (jobs) --configure--> round dir (jobs.storage)
        └─dispatch: run_client (one per phone, its host's devices queue)--> engine.client
              runtime_for(device).session(...)   prepare -> deliver -> run("train") -> collect
              [exec runtime: devices/adb.py --ADB--> phone: agent.pyz train <round dir>]
              upload checked (uploads.upload_errors) --> ClientResult reported/rejected --> events
        └─dispatch: close_round (goal reached, or the deadline) --> engine.closing
              strategy.aggregate (fl) -> evaluate -> checkpoint (jobs.storage) -> commit
              --signals.round_committed--> analysis (influence: dispatch analyse_rounds)
              --dispatch: start_round--> the next round
      events (jobs.events, after commit) --channels--> web.consumers --websocket--> the dashboard

Dependencies point one way (pyproject.toml's import-linter contracts): web -> analysis -> engine -> jobs
-> models, with training/fl and training/agent pure; only engine/runtimes/ imports devices/adb.py.
"""

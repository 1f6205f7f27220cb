"""The web layer: pages, JSON API and websockets of federated jobs, and the Plotly figures they show.

    views.py, forms.py, urls.py        server-rendered pages (dashboard, new job, compare, exports)
    api.py, serializers.py             the REST API (DRF), sharing the job config validation with the form
    consumers.py, routing.py           ws/jobs/<id>/: the live dashboard's event stream
    influence_section.py               the dashboard's client-influence section
    device_panel.py                    the device page's "Federated jobs" card (registered into devices)
    charts/                            figure builders, pure: job, availability, submodel, influence

Views stay thin: they read through training/analysis and training/jobs and write through
training/jobs/services.py.
"""

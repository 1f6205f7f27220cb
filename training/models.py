"""Federated jobs: Job, Participant, Round, ClientResult (filled in by the federated-jobs issue)."""

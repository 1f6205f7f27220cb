"""The on-device agent: `python agent.pyz train <round dir>` (see training/agent/runner.py), or resident:
`python agent.pyz serve --port P` (serve.py), which the platform drives over protocol.py's frames.

Stdlib + torch + numpy + training/fl only — no Django, no scikit-learn — because this is what runs on
phones; safetensors is used when installed, else training/fl/safetensors_layout.py reads and writes the
same bytes. The platform builds it into one zipapp with training/agent/build.py.
"""

AGENT_VERSION = "1.0.0"  # bump when the config.json / result.json contract changes
CONFIG_FORMAT = 1
